//! `stagesync run` keeping guards: a binding removed or changed in the UI is
//! put back at the next resync, with a WARN line, and counted in
//! `stagesync_guards{status}`.

use support::daemon::Harness;

const FLOW: &str = "default-authentication-flow";

#[test]
fn a_guard_removed_or_changed_in_the_ui_is_restored_at_the_next_resync() {
    let h = Harness::new();
    let flow = h.sim.seed_flow(FLOW, "Welcome");
    h.ws.write(
        "login.yaml",
        &format!(
            "name: login-recaptcha\npublic_key: site\nprivate_key: !Env CAPTCHA_KEY\nguards:\n  - flow: {FLOW}\n    order: 15\n"
        ),
    );
    let mut d = h.start_daemon(
        h.ws.stages(),
        &["--interval", "5s"],
        &[("CAPTCHA_KEY", "guards-run-key")],
    );
    d.wait_for_metric_eq("stagesync_guards{status=\"in_sync\"}", 1.0);
    let stage = h.live("login-recaptcha").expect("created").uuid;
    let bindings = h.sim.bindings_of_stage(stage);
    assert_eq!(bindings.len(), 1);
    assert_eq!((bindings[0].1, bindings[0].2), (flow, 15));

    // Unbound in the UI: bound again at the next resync, with a WARN line.
    assert!(h.sim.unbind(bindings[0].0));
    let line = d.wait_for_log(&format!(
        "captcha login-recaptcha was unbound from flow {FLOW}; bound again"
    ));
    assert!(line.contains("WARN"), "{line}");
    d.wait_until("bound again", || h.sim.bindings_of_stage(stage).len() == 1);

    // Its order changed in the UI: the same binding is set back.
    let (binding, _, _) = h.sim.bindings_of_stage(stage)[0];
    h.sim.set_binding_order(binding, 99);
    d.wait_for_log(&format!(
        "captcha login-recaptcha's binding to flow {FLOW} was changed; set back"
    ));
    d.wait_until("order 15 again", || {
        h.sim.bindings_of_stage(stage) == vec![(binding, flow, 15)]
    });
    d.wait_for_metric_eq("stagesync_guards{status=\"in_sync\"}", 1.0);
}

#[test]
fn a_dry_run_reports_a_removed_guard_without_binding_it() {
    let h = Harness::new();
    let flow = h.sim.seed_flow(FLOW, "Welcome");
    let stage = h.sim.seed_captcha(
        stagesync::kinds::captcha::StageFields::with_defaults("login-recaptcha", "site"),
        "guards-run-key",
    );
    h.ws.write(
        "login.yaml",
        &format!(
            "name: login-recaptcha\npublic_key: site\nprivate_key: !Env CAPTCHA_KEY\nguards:\n  - flow: {FLOW}\n    order: 15\n"
        ),
    );
    let mut d = h.start_daemon(
        h.ws.stages(),
        &["--dry-run"],
        &[("CAPTCHA_KEY", "guards-run-key")],
    );
    d.wait_for_metric_eq("stagesync_guards{status=\"drifted\"}", 1.0);
    d.wait_for_log("drift found (dry run: not written)");
    assert_eq!(h.sim.bindings_of_stage(stage), vec![]);
    let _ = flow;
}
