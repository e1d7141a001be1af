//! `stagesync demo`: the whole loop on the built-in simulator, no setup.
//!
//! It seeds the simulator so that the manifests in DIR have something to do
//! (one stage in sync, one drifted, one missing, one unmanaged stage, and one
//! managed stage whose manifest is gone but which a login flow uses, so the
//! prune is blocked),
//! prints the plan, applies it, prints the now-empty plan, checks the keys with
//! a fake captcha provider (one of them is refused), then runs the daemon
//! against DIR until Ctrl-C, so that editing a file shows convergence live.
//! Secrets referenced with `!Env` that are not set get demo values, set before
//! any thread starts (see [`set_demo_secrets`]).
//!
//! The demo carries its own example manifests (the repository's `stages/`,
//! embedded at build time), so that it works from any directory: with no
//! directory named and no `./stages/`, it writes them to a temporary directory,
//! says where, and removes it when it ends. A directory it is given is only
//! read, never edited.

use std::cell::RefCell;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::apply;
use crate::authentik::{Client, ClientSettings};
use crate::cli::{DemoConfig, ReconcileConfig, RunConfig};
use crate::commands::{apply::render_report, load_desired, verify};
use crate::exit::Exit;
use crate::kinds::Kind;
use crate::kinds::captcha::{DesiredStage, StageFields};
use crate::output::Console;
use crate::plan::{self, PruneSettings};
use crate::policy::{Policy, ProviderHosts};
use crate::reconcile::{Session, State};
use crate::secret::ExposeSecret;
use crate::signals::Shutdown;
use crate::simulator::{self, SimConfig, provider};
use crate::state::{ManagedAs, StateFile};
use crate::text::escape;
use crate::verify::{KeyCheck, KeyProbe, ProbeSettings, Prober, allowed_by};

const DEMO_TOKEN: &str = "demo-token";
/// The example manifests, as in the repository's `stages/`.
const EMBEDDED_MANIFESTS: [(&str, &str); 3] = [
    ("hcaptcha.yaml", include_str!("../../stages/hcaptcha.yaml")),
    (
        "recaptcha-v3.yaml",
        include_str!("../../stages/recaptcha-v3.yaml"),
    ),
    (
        "turnstile.yaml",
        include_str!("../../stages/turnstile.yaml"),
    ),
];
/// The demo prunes, to show a prune blocked by a login flow.
const DEMO_PRUNE: PruneSettings = PruneSettings {
    enabled: true,
    max_deletes: None,
    from_plan_file: false,
};
/// A stage stagesync once created, whose manifest is gone, and which a login
/// flow and an identification stage still use.
const DEMO_ORPHAN: &str = "old-login-captcha";
/// A resync this short so the demo shows an out-of-band edit being reverted
/// within seconds; a real deployment uses minutes.
const DEMO_INTERVAL: Duration = Duration::from_secs(15);
/// The event poll of the demo: a UI edit is reverted within this.
const DEMO_EVENT_POLL: Duration = Duration::from_secs(2);

/// When no directory was named and `./stages/` does not exist, writes the
/// embedded example manifests to a new temporary directory, points `cfg.dir`
/// at it and says so. The directory is removed when the returned guard drops.
pub(crate) fn embedded_manifests_if_needed(
    cfg: &mut DemoConfig,
    console: &Console,
) -> Result<Option<tempfile::TempDir>> {
    if !cfg.embedded_if_missing || cfg.dir.is_dir() {
        return Ok(None);
    }
    let temp = tempfile::Builder::new()
        .prefix("stagesync-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo's manifests")?;
    let dir = temp.path().join("stages");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir(&dir)?;
        for (name, content) in EMBEDDED_MANIFESTS {
            std::fs::write(dir.join(name), content)?;
        }
        Ok(())
    };
    write().with_context(|| {
        format!(
            "cannot write the demo's manifests to {}",
            escape(&dir.display().to_string())
        )
    })?;
    console.errln(&format!(
        "demo: no {} here: using the demo's own example manifests, written to {} (removed when the demo ends; `stagesync demo --dir DIR` uses yours)",
        escape(&cfg.dir.display().to_string()),
        escape(&dir.display().to_string())
    ));
    cfg.dir = dir;
    Ok(Some(temp))
}

/// Gives every `!Env` variable the manifests reference, and that is unset, a
/// demo value, and says so on stderr.
///
/// Must run before any thread is started: changing the environment of a
/// multi-threaded process is undefined behaviour on most platforms.
/// Only variables the policy allows are asked for, so stagesync's own
/// (`AUTHENTIK_*`, `STAGESYNC_*`) never get a demo value.
pub(crate) fn set_demo_secrets(dir: &Path, policy: &Policy, console: &Console) {
    let wanted = RefCell::new(Vec::new());
    let _ = crate::manifest::load_with_env(dir, policy, &|var| {
        wanted.borrow_mut().push(var.to_owned());
        Some(OsString::from("demo"))
    });
    let mut wanted = wanted.into_inner();
    wanted.sort();
    wanted.dedup();
    for var in wanted.into_iter().filter(|v| std::env::var_os(v).is_none()) {
        // SAFETY: called from `dispatch` before the runtime (or any other
        // thread) exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var(&var, format!("demo-secret-{}", var.to_ascii_lowercase())) };
        console.errln(&format!(
            "demo: set {var} to a demo value (real keys come from your environment)"
        ));
    }
}

pub(crate) async fn run(
    cfg: DemoConfig,
    console: &Console,
    shutdown: &Shutdown,
    color: bool,
) -> Result<Exit> {
    let mut desired = load_desired(&cfg.dir, &cfg.policy, console)?;
    desired.sort_by(|a, b| a.fields.name.cmp(&b.fields.name));

    let sim = simulator::start(SimConfig {
        token: DEMO_TOKEN.to_owned(),
        ..SimConfig::default()
    })
    .await
    .context("cannot start the simulator")?;
    let work = tempfile::tempdir().context("cannot create a temporary directory")?;
    let state_file = work.path().join("state.json");

    // Seed authentik as an admin might have left it after an earlier apply (keys
    // recorded as written by stagesync): the first stage in sync, the second
    // drifted, the third missing, and a stage nobody manages.
    {
        let mut state = StateFile::open_for_write(&state_file)?;
        for (i, stage) in desired.iter().enumerate() {
            let fields = match i {
                0 => stage.fields.clone(),
                1 => StageFields {
                    score_min_threshold: 0.1,
                    ..stage.fields.clone()
                },
                _ => continue,
            };
            let uuid = sim.seed_captcha(fields, "demo");
            state.keys_mut().record(uuid, &stage.private_key);
        }
        sim.seed_captcha(
            StageFields::with_defaults("legacy-signup-captcha", "clicked-in-the-ui"),
            "k",
        );
        let orphan = sim.seed_captcha(StageFields::with_defaults(DEMO_ORPHAN, "old-site"), "k");
        state
            .inventory_mut()
            .manage(Kind::CaptchaStage, orphan, DEMO_ORPHAN, ManagedAs::Created);
        sim.seed_flow_binding(orphan, "default-authentication-flow", "Welcome", 10);
        sim.seed_identification_stage("default-authentication-identification", Some(orphan));
        state.save()?;
    }
    console.errln(&format!(
        "demo: an authentik simulator is listening on {} (token {DEMO_TOKEN:?}, a demo value)",
        sim.url()
    ));

    let settings = ClientSettings {
        url: sim.url(),
        token: DEMO_TOKEN.to_owned().into(),
        ca_file: None,
        insecure_skip_tls_verify: false,
        allow_http: false,
        connect_timeout: ClientSettings::DEFAULT_CONNECT_TIMEOUT,
        request_timeout: ClientSettings::DEFAULT_REQUEST_TIMEOUT,
    };
    let client = Client::new(&settings)?;
    let mut session = Session::new(client, State::locked(&state_file)?, cfg.policy.clone());

    heading(
        "1. stagesync plan --prune: what differs from the manifests",
        color,
        console,
    );
    let planned = session
        .fetch_and_plan(desired.clone(), DEMO_PRUNE, true)
        .await?;
    console.out(&plan::render_text(&planned.plan, color))?;

    heading("2. stagesync apply --prune --yes: converge", color, console);
    let report = session
        .execute(&planned.plan, 4, &apply::Stop::new(), |_| false, |_| {})
        .await;
    session.record(&planned, Some(&report));
    session.save()?;
    console.out(render_report(&report).trim_start())?;

    heading(
        "3. stagesync plan --prune again: nothing left to do but the blocked prune",
        color,
        console,
    );
    let again = session
        .fetch_and_plan(desired.clone(), DEMO_PRUNE, true)
        .await?;
    console.out(&plan::render_text(&again.plan, color))?;
    drop(session);

    if !report.converged() || again.plan.has_changes() {
        console.errln("demo: the simulator did not converge; this is a bug");
        return Ok(Exit::Failed);
    }

    heading("4. stagesync verify: do the keys work?", color, console);
    let checks = verify_keys(&desired, console).await?;
    console.out(&verify::render_text(&checks, color))?;
    if verify::outcome(&verify::Counts::of(&checks), false) != Exit::Success {
        console.out(
            "stagesync verify would exit 1 here; `stagesync run --verify-keys` reports it as the stagesync_key_check metric.\n",
        )?;
    }
    if !cfg.daemon {
        return Ok(Exit::Success);
    }

    heading(
        "5. stagesync run: keeping it converged (Ctrl-C to stop)",
        color,
        console,
    );
    let example = planned
        .plan
        .manifest_entries()
        .next()
        .and_then(|s| s.origin.as_ref())
        .map(|o| o.file.display().to_string());
    let mut intro = String::new();
    if let Some(file) = example {
        intro.push_str(&format!(
            "Edit {} (say, change score_min_threshold) and save: the daemon reconciles within a second.\n",
            escape(&file)
        ));
    }
    // The demo should not fail because something else holds the port.
    let listen = cfg.listen.filter(|addr| {
        let free = std::net::TcpListener::bind(addr).is_ok();
        if !free {
            console.errln(&format!(
                "demo: {addr} is in use; running without the health and metrics endpoints"
            ));
        }
        free
    });
    if let Some(listen) = listen {
        intro.push_str(&format!(
            "Health and metrics: http://{listen}/healthz, /readyz, /metrics\n"
        ));
    }
    intro.push_str(&format!(
        "In 10 s an admin will change a stage in the UI and unbind a captcha from its login flow; the event poll (every {} s) notices the change and reverts both, naming who changed the stage (the resync every {} s is the backstop).\n\n",
        DEMO_EVENT_POLL.as_secs(),
        DEMO_INTERVAL.as_secs()
    ));
    console.out(&intro)?;

    let ui_edit = tokio::spawn({
        let sim = sim.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if let Some(stage) = sim
                .captcha_stages()
                .into_iter()
                .find(|s| !["legacy-signup-captcha", DEMO_ORPHAN].contains(&s.fields.name.as_str()))
            {
                let admin = crate::simulator::Actor::ui("admin", "192.0.2.7");
                sim.edit_as(&admin, stage.uuid, |f| f.score_min_threshold = 0.05);
                tracing::warn!(stage = %stage.fields.name, "demo: an admin set score_min_threshold to 0.05 in the UI");
            }
            // A guard removed in the UI: the login flow runs without its captcha.
            if let Some((stage, binding)) = sim
                .captcha_stages()
                .into_iter()
                .filter(|s| s.fields.name != DEMO_ORPHAN)
                .find_map(|s| {
                    let binding = sim.bindings_of_stage(s.uuid).first().map(|b| b.0)?;
                    Some((s.fields.name, binding))
                })
            {
                sim.unbind(binding);
                tracing::warn!(stage = %stage, "demo: an admin unbound captcha {stage} from its login flow in the UI");
            }
        }
    });
    let run = RunConfig {
        reconcile: ReconcileConfig {
            dir: cfg.dir,
            policy: cfg.policy,
            client: settings,
            state_file,
            prune: DEMO_PRUNE,
        },
        interval: DEMO_INTERVAL,
        debounce: Duration::from_millis(500),
        event_poll: Some(DEMO_EVENT_POLL),
        notify: Vec::new(),
        notify_format: crate::drift::notify::Format::default(),
        freeze_windows: Vec::new(),
        dry_run: false,
        listen,
        concurrency: 4,
        verify_keys: false,
        shutdown_timeout: Duration::from_secs(10),
    };
    let outcome = crate::commands::run::run(run, shutdown).await;
    ui_edit.abort();
    sim.shutdown();
    outcome
}

/// `stagesync verify` against a fake captcha provider on loopback: the demo
/// keys are made up, so the stages' real `api_url`s would refuse them all (and
/// should not be sent them). The provider knows every stage's key but the last
/// one's, as if that key had been rotated at the provider and not in the
/// manifest, so the report shows one invalid key.
async fn verify_keys(desired: &[DesiredStage], console: &Console) -> Result<Vec<KeyCheck>> {
    let Some((bad, good)) = desired.split_last() else {
        return Ok(Vec::new());
    };
    let fake = provider::start("rotated-at-the-provider", &bad.fields.public_key)
        .await
        .context("cannot start the fake captcha provider")?;
    for stage in good {
        fake.add_site(stage.private_key.expose_secret(), &stage.fields.public_key);
    }
    let url = fake.siteverify_url();
    console.errln(&format!(
        "demo: key checks go to a fake captcha provider on {url} instead of each stage's api_url \
         (the demo keys are made up) and allows that host only; it knows every key but {}'s",
        escape(&bad.fields.name)
    ));
    let probes: Vec<KeyProbe> = desired
        .iter()
        .map(|stage| KeyProbe {
            api_url: url.clone(),
            ..KeyProbe::from_desired(stage)
        })
        .collect();
    let prober = Prober::new(ProbeSettings::default())?;
    // The demo's own provider on loopback is the one host it allows.
    let own_provider = ProviderHosts::new(&[format!("http://{}", fake.addr())])?;
    let checks = prober.verify(&probes, &allowed_by(&own_provider)).await;
    fake.shutdown();
    Ok(checks)
}

fn heading(text: &str, color: bool, console: &Console) {
    let style = anstyle::Style::new().bold();
    let line = if color {
        format!("\n{}== {text}{}\n\n", style.render(), style.render_reset())
    } else {
        format!("\n== {text}\n\n")
    };
    let _ = console.out(&line);
}
