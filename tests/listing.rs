//! Reading live state with the fewest calls, and reading it right when it
//! changes meanwhile: the real binary against the simulator (request counts)
//! and against a scripted server whose list shifts between pages.

use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::{RequestCounts, SimHandle};
use support::cli::{Workspace, run, start_sim, stderr, stdout};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const VERSION: &str = "/api/v3/admin/version/";
const LIST: &str = "/api/v3/stages/captcha/";
const ALL: &str = "/api/v3/stages/all/";

// ------------------------------------------------------------ a shifting list

/// A captcha stage as authentik lists it.
fn stage_json(i: usize) -> serde_json::Value {
    serde_json::json!({
        "pk": format!("00000000-0000-4000-8000-{i:012}"),
        "name": format!("s{i:03}"),
        "public_key": format!("site-{i}"),
    })
}

/// A page of the captcha list: stages `items`, the list's `count`, `total` pages.
fn page(
    items: impl IntoIterator<Item = usize>,
    number: u64,
    total: u64,
    count: u64,
) -> ResponseTemplate {
    let results: Vec<_> = items.into_iter().map(stage_json).collect();
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "pagination": {
            "next": if number < total { number + 1 } else { 0 },
            "previous": number - 1,
            "count": count,
            "current": number,
            "total_pages": total,
            "start_index": 0,
            "end_index": 0,
        },
        "results": results,
        "autocomplete": {},
    }))
}

async fn scripted_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(VERSION))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"version_current": "2025.12.4", "version_latest": "2025.12.4"}),
        ))
        .mount(&server)
        .await;
    server
}

/// Serves page `number` of the captcha list with `response`, `times` times
/// (`None`: for good); earlier mounts answer first.
async fn serve_page(
    server: &MockServer,
    number: u64,
    response: ResponseTemplate,
    times: Option<u64>,
) {
    let mock = Mock::given(method("GET"))
        .and(path(LIST))
        .and(query_param("page", number.to_string()))
        .respond_with(response);
    let mock = match times {
        Some(n) => mock.up_to_n_times(n),
        None => mock,
    };
    mock.mount(server).await;
}

/// `plan --format json` of an empty manifest directory against `server`.
async fn plan_json(server: &MockServer) -> (std::process::Output, Option<serde_json::Value>) {
    let sim = start_sim().await; // only for the workspace's command
    let ws = Workspace::new();
    let mut cmd = ws.cmd(&sim);
    cmd.args(["plan", "--format", "json", "--url", &server.uri(), "stages"]);
    let out = run(cmd).await;
    let json = serde_json::from_str(&stdout(&out)).ok();
    (out, json)
}

fn list_calls(requests: &[wiremock::Request]) -> usize {
    requests.iter().filter(|r| r.url.path() == LIST).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_shown_on_two_pages_is_listed_once() {
    let server = scripted_server().await;
    // The list shifted by one between the pages: s099 ends page 1 and starts page 2.
    serve_page(&server, 1, page(0..100, 1, 2, 101), None).await;
    serve_page(&server, 2, page(99..101, 2, 2, 101), None).await;
    let (out, json) = plan_json(&server).await;
    let json = json.unwrap_or_else(|| panic!("JSON plan: {}", stderr(&out)));
    assert_eq!(json["summary"]["unmanaged"], 101, "{}", stderr(&out));
    let names: Vec<&str> = json["unmanaged"]
        .as_array()
        .expect("unmanaged list")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .filter(|n| *n == "s099")
        .collect();
    assert_eq!(names, ["s099"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_whose_total_changed_while_paging_is_read_again() {
    let server = scripted_server().await;
    // First read: 150 stages by page 1, 151 by page 2 (one was created meanwhile).
    serve_page(&server, 1, page(0..100, 1, 2, 150), Some(1)).await;
    serve_page(&server, 2, page(100..151, 2, 2, 151), Some(1)).await;
    // Second read: 151 throughout.
    serve_page(&server, 1, page(0..100, 1, 2, 151), None).await;
    serve_page(&server, 2, page(100..151, 2, 2, 151), None).await;
    let (out, json) = plan_json(&server).await;
    let json = json.unwrap_or_else(|| panic!("JSON plan: {}", stderr(&out)));
    assert_eq!(json["summary"]["unmanaged"], 151);
    let requests = server.received_requests().await.unwrap_or_default();
    assert_eq!(list_calls(&requests), 4, "two pages, read twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_keeps_changing_is_an_error_after_three_reads() {
    let server = scripted_server().await;
    serve_page(&server, 1, page(0..100, 1, 2, 150), None).await;
    serve_page(&server, 2, page(100..151, 2, 2, 151), None).await;
    let (out, _) = plan_json(&server).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "the list at /api/v3/stages/captcha/ changed while it was read, 3 times in a row"
        ),
        "{err}"
    );
    let requests = server.received_requests().await.unwrap_or_default();
    assert_eq!(list_calls(&requests), 6, "two pages, three reads");
}

// ------------------------------------------------------------ name checks

/// `count` manifests `new-NNNN` to be created, with a key from `$KEY`.
fn workspace_creating(count: usize) -> Workspace {
    let ws = Workspace::new();
    let mut text = String::new();
    for i in 0..count {
        text.push_str(&format!(
            "---\nname: new-{i:04}\npublic_key: site-{i}\nprivate_key: !Env KEY\n"
        ));
    }
    ws.write("new.yaml", &text);
    ws
}

/// `others` stages of other types, and `captcha` captcha stages nobody manages.
fn seed(sim: &SimHandle, others: usize, captcha: usize) {
    for i in 0..others {
        sim.seed_other_stage(&format!("other-{i:04}"), "ak-stage-identification-form");
    }
    for i in 0..captcha {
        sim.seed_captcha(
            StageFields::with_defaults(format!("old-{i:04}"), "site"),
            "k",
        );
    }
}

/// `apply --yes` of `creates` new stages on an install holding `others`
/// stages of other types and `captcha` unmanaged captcha stages: the requests
/// it made, and the captcha stages afterwards.
async fn apply_creates(others: usize, captcha: usize, creates: usize) -> (RequestCounts, usize) {
    let sim = start_sim().await;
    seed(&sim, others, captcha);
    let ws = workspace_creating(creates);
    let mut cmd = ws.cmd(&sim);
    cmd.env("KEY", "name-check-key")
        .args(["apply", "--yes", "stages"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (sim.request_counts(), sim.captcha_stages().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_creates_list_every_stage_instead_of_looking_each_name_up() {
    // 250 stages of every type (3 pages of 100), 40 names to check.
    let (counts, captcha_after) = apply_creates(200, 50, 40).await;
    assert_eq!(
        counts.get("GET", ALL),
        3,
        "every page of stages/all, no look-up: {counts:?}"
    );
    assert_eq!(counts.get("GET", LIST), 1);
    assert_eq!(counts.get("POST", LIST), 40);
    // The bound: ceil(all stages / 100) + creates + 2 for the version and the captcha list.
    let all_stages = 200 + 50 + 40;
    assert!(
        counts.total() <= (all_stages as u64).div_ceil(100) + 40 + 2,
        "{counts:?}"
    );
    assert_eq!(captcha_after, 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_creates_in_a_large_install_look_their_names_up() {
    // 450 stages (5 pages), 3 names: the first page, then a look-up each,
    // all on the stages/all route.
    let (counts, _) = apply_creates(450, 0, 3).await;
    assert_eq!(counts.get("GET", ALL), 4, "{counts:?}");
    assert_eq!(counts.get("POST", LIST), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_held_by_another_stage_type_is_found_either_way() {
    for creates in [2, 40] {
        let sim = start_sim().await;
        seed(&sim, 250, 0);
        // The last page holds it (names sort after "other-0").
        sim.seed_other_stage("new-0001", "ak-stage-identification-form");
        let ws = workspace_creating(creates);
        let mut cmd = ws.cmd(&sim);
        cmd.env("KEY", "k").args(["plan", "stages"]);
        let out = run(cmd).await;
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            text.contains("new-0001") && text.contains("already used by an identification stage"),
            "{creates} creates: {text}"
        );
        assert_ne!(out.status.code(), Some(0), "{text}");
    }
}
