//! `plan --format markdown` fits where it is posted: 1,000 changed stages,
//! through the real binary against the simulator, stay under GitHub's comment
//! limit with the summary and every warning first and a count of what was left
//! out.

use stagesync::kinds::captcha::StageFields;
use support::cli::{Workspace, run, start_sim, stderr, stdout};

/// 500 stages drifted live (the last one's key moving to another host) and
/// 500 missing: 1,000 changed stages, in one multi-document file.
async fn thousand_changes() -> (Workspace, stagesync::simulator::SimHandle) {
    let sim = start_sim().await;
    let ws = Workspace::new();
    let mut docs = Vec::new();
    for i in 0..1000 {
        let name = format!("stage-{i:04}");
        let api_url = if i == 499 {
            "api_url: https://captcha.internal/siteverify\n"
        } else {
            ""
        };
        if i < 500 {
            sim.seed_captcha(
                StageFields {
                    score_min_threshold: 0.1,
                    ..StageFields::with_defaults(name.as_str(), "site-key")
                },
                "k",
            );
        }
        docs.push(format!(
            "name: {name}\npublic_key: site-key\nprivate_key: !Env CAPTCHA_KEY\n{api_url}score_min_threshold: 0.5\n"
        ));
    }
    ws.write("all.yaml", &docs.join("---\n"));
    (ws, sim)
}

fn plan_md(
    ws: &Workspace,
    sim: &stagesync::simulator::SimHandle,
    extra: &[&str],
) -> assert_cmd::Command {
    let mut cmd = ws.cmd(sim);
    cmd.env("CAPTCHA_KEY", "key-4c1d")
        .env("STAGESYNC_PROVIDER_HOSTS", "captcha.internal")
        .args(["plan", "--format", "markdown"])
        .args(extra)
        .arg("stages");
    cmd
}

/// `(left out, of)` from the last paragraph.
fn left_out(markdown: &str) -> Option<(usize, usize)> {
    let last = markdown.lines().last()?;
    let counts = last
        .strip_prefix("**")?
        .split(" entries left out**")
        .next()?;
    let (left, total) = counts.split_once(" of ")?;
    Some((left.parse().ok()?, total.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_changed_stages_fit_a_github_comment() {
    let (ws, sim) = thousand_changes().await;
    let out = run(plan_md(&ws, &sim, &[])).await;
    let markdown = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        markdown.chars().count() <= 65_536,
        "{} chars",
        markdown.chars().count()
    );
    assert!(markdown.starts_with(
        "### stagesync plan\n\n**Plan: 500 to create, 500 to update, 0 in sync, 0 unmanaged, 1 security warning.**"
    ));
    // The one warning, of the 500th entry, comes before any entry.
    let warning = markdown
        .find("stage \\`stage-0499\\`: the key will be sent to a new host")
        .expect(&markdown);
    assert!(warning < markdown.find("<details>").expect("entries"));
    let shown = markdown.matches("<details><summary>~ update").count()
        + markdown.matches("<details><summary>+ create").count();
    let (left, total) = left_out(&markdown).expect(&markdown);
    assert_eq!(total, 1000);
    assert!(shown >= 50, "{shown}");
    assert_eq!(shown + left, 1000);
    assert!(
        markdown.trim_end().ends_with(
            "The full plan: `stagesync plan` prints every entry (in CI: the job's log)."
        ),
        "{}",
        &markdown[markdown.len() - 400..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_and_where_the_full_plan_is_are_the_callers() {
    let (ws, sim) = thousand_changes().await;
    // GitLab's limit holds all of it: nothing left out.
    let out = run(plan_md(&ws, &sim, &["--max-chars", "1000000"])).await;
    let whole = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(whole.matches("<details><summary>").count(), 1000);
    assert!(left_out(&whole).is_none());
    assert!(whole.chars().count() > 65_536);

    let url = "https://ci.example/pipelines/42";
    let out = run(plan_md(
        &ws,
        &sim,
        &[
            "--max-chars",
            "20000",
            "--full-plan-at",
            url,
            "--out",
            "plan.json",
        ],
    ))
    .await;
    let cut = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(cut.chars().count() <= 20_000);
    assert!(
        cut.trim_end().ends_with(&format!(
            "The full plan: {url}; the plan file `plan.json` (every entry)."
        )),
        "{cut}"
    );
    let saved = std::fs::read_to_string(ws.root.path().join("plan.json")).expect("plan file");
    assert!(
        saved.matches("\"stage-").count() >= 1000,
        "every entry in the plan file"
    );

    // They shape Markdown only.
    let mut text = ws.cmd(&sim);
    text.env("CAPTCHA_KEY", "key-4c1d")
        .args(["plan", "--max-chars", "5000", "stages"]);
    let out = run(text).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("go with --format markdown"),
        "{}",
        stderr(&out)
    );
    let out = run(plan_md(&ws, &sim, &["--max-chars", "100"])).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}
