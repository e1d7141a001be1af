//! The watcher against real directories: every way manifests change in
//! practice must end in a hint, and bursts must coalesce.

use std::os::unix::fs::symlink;
use std::process::Command;

use support::files::{atomic_save, swap_symlink, write};
use support::watch::watch;

const MANIFEST: &str = "name: a\nprovider: turnstile\n";

#[tokio::test]
async fn an_edit_in_place_is_a_hint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("a.yaml"), MANIFEST);
    let mut w = watch(tmp.path());
    write(&tmp.path().join("a.yaml"), "name: a\nprovider: hcaptcha\n");
    w.expect_hint("edit in place").await;
}

#[tokio::test]
async fn an_editors_atomic_rename_save_is_a_hint_and_watching_goes_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a.yaml");
    write(&file, MANIFEST);
    let mut w = watch(tmp.path());
    atomic_save(&file, "name: a\nprovider: hcaptcha\n");
    w.expect_hint("atomic save").await;
    w.settle().await;
    atomic_save(&file, "name: a\nprovider: recaptcha\n");
    w.expect_hint("second atomic save").await;
}

#[tokio::test]
async fn a_file_in_a_new_sub_folder_is_a_hint_and_the_folder_is_watched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = watch(tmp.path());
    write(&tmp.path().join("team/b.yaml"), MANIFEST);
    w.expect_hint("new folder with a file").await;
    w.settle().await;
    write(&tmp.path().join("team/c.yaml"), MANIFEST);
    w.expect_hint("a later file in the new folder").await;
    w.settle().await;
    write(&tmp.path().join("team/deeper/d.yaml"), MANIFEST);
    w.expect_hint("a file two new levels down").await;
}

#[tokio::test]
async fn a_deletion_is_a_hint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("a.yaml"), MANIFEST);
    write(&tmp.path().join("sub/b.yaml"), MANIFEST);
    let mut w = watch(tmp.path());
    std::fs::remove_file(tmp.path().join("sub/b.yaml")).expect("rm");
    w.expect_hint("deleted file").await;
}

#[tokio::test]
async fn reading_the_directory_is_not_a_hint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("a.yaml"), MANIFEST);
    write(&tmp.path().join("sub/b.yaml"), MANIFEST);
    let mut w = watch(tmp.path());
    for _ in 0..3 {
        for entry in std::fs::read_dir(tmp.path()).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                std::fs::read_to_string(&path).expect("read");
            }
        }
        std::fs::read_to_string(tmp.path().join("sub/b.yaml")).expect("read");
    }
    w.expect_quiet("the pass reading the manifests").await;
}

#[tokio::test]
async fn files_that_are_not_manifests_and_folders_without_any_are_not_hints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("a.yaml"), MANIFEST);
    let mut w = watch(tmp.path());
    for line in 0..20 {
        write(&tmp.path().join("stagesync.log"), &format!("line {line}\n"));
        write(&tmp.path().join("logs/old/stagesync.log"), "rotated\n");
    }
    write(&tmp.path().join("a.yaml.swp"), "editor swap file");
    std::fs::create_dir(tmp.path().join("empty")).expect("mkdir");
    w.expect_quiet("a log file, an editor's swap file, folders without manifests")
        .await;
    std::fs::rename(tmp.path().join("a.yaml"), tmp.path().join("logs/a.yaml")).expect("mv");
    w.expect_hint("a manifest moved into one of those folders")
        .await;
}

#[tokio::test]
async fn hidden_files_and_folders_the_loader_skips_are_not_hints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("a.yaml"), MANIFEST);
    let mut w = watch(tmp.path());
    write(
        &tmp.path().join(".github/workflows/ci.yml"),
        "on: push\njobs: {}\n",
    );
    write(&tmp.path().join(".draft.yaml"), MANIFEST);
    write(&tmp.path().join("team/.draft.yaml"), MANIFEST);
    w.expect_quiet("YAML under hidden names, which the loader does not read")
        .await;
    std::fs::rename(tmp.path().join(".draft.yaml"), tmp.path().join("b.yaml")).expect("mv");
    w.expect_hint("a hidden manifest renamed to a visible name")
        .await;
}

#[tokio::test]
async fn a_burst_of_changes_coalesces_into_few_hints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = watch(tmp.path());
    for i in 0..200 {
        write(&tmp.path().join(format!("d{}/s{i}.yaml", i % 10)), MANIFEST);
    }
    for i in 0..50 {
        std::fs::remove_file(tmp.path().join(format!("d{}/s{i}.yaml", i % 10))).expect("rm");
    }
    let hints = w.count_hints().await;
    assert!((1..=2).contains(&hints), "{hints} hints for one burst");
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_git_checkout_is_one_or_two_hints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    git(dir, &["init", "-q"]);
    for i in 0..100 {
        write(&dir.join(format!("team{}/s{i}.yaml", i % 5)), MANIFEST);
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "one"]);
    git(dir, &["checkout", "-qb", "other"]);
    for i in 0..100 {
        write(
            &dir.join(format!("team{}/s{i}.yaml", i % 5)),
            "name: b\nprovider: hcaptcha\n",
        );
    }
    write(&dir.join("new/x.yaml"), MANIFEST);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "two"]);

    let mut w = watch(dir);
    git(dir, &["checkout", "-q", "main"]);
    let hints = w.count_hints().await;
    assert!((1..=2).contains(&hints), "{hints} hints for one checkout");
    assert!(!dir.join("new").exists());
}

#[tokio::test]
async fn git_syncs_symlink_swap_is_a_hint_and_the_new_target_is_watched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join(".worktrees/rev1/a.yaml"), MANIFEST);
    symlink(root.join(".worktrees/rev1"), root.join("current")).expect("symlink");
    let link = root.join("current");
    let mut w = watch(&link);

    write(
        &root.join(".worktrees/rev2/a.yaml"),
        "name: a\nprovider: hcaptcha\n",
    );
    swap_symlink(&link, &root.join(".worktrees/rev2"));
    std::fs::remove_dir_all(root.join(".worktrees/rev1")).expect("rm old worktree");
    w.expect_hint("symlink swap").await;
    w.settle().await;

    write(&link.join("b.yaml"), MANIFEST);
    w.expect_hint("a change inside the new target").await;
    w.settle().await;

    // A relative link, as git-sync writes it, swapped once more.
    write(&root.join(".worktrees/rev3/a.yaml"), MANIFEST);
    swap_symlink(&link, std::path::Path::new(".worktrees/rev3"));
    w.expect_hint("second swap").await;
    w.settle().await;
    write(&root.join(".worktrees/rev3/c.yaml"), MANIFEST);
    w.expect_hint("a change inside the third target").await;
}

#[tokio::test]
async fn a_symlink_swap_above_dir_is_a_hint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join("rev1/stages/a.yaml"), MANIFEST);
    symlink(root.join("rev1"), root.join("current")).expect("symlink");
    let dir = root.join("current/stages");
    let mut w = watch(&dir);

    write(
        &root.join("rev2/stages/a.yaml"),
        "name: a\nprovider: hcaptcha\n",
    );
    swap_symlink(&root.join("current"), &root.join("rev2"));
    w.expect_hint("swap of a link on DIR's path").await;
    w.settle().await;
    write(&root.join("rev2/stages/b.yaml"), MANIFEST);
    w.expect_hint("a change inside the new target").await;
}

/// The layout the kubelet's atomic writer makes for a ConfigMap volume.
fn configmap_generation(dir: &std::path::Path, generation: &str, content: &str) {
    write(&dir.join(generation).join("a.yaml"), content);
}

#[tokio::test]
async fn a_configmap_data_swap_is_a_hint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("config");
    configmap_generation(&dir, "..2026_11_28_20_00_00.1", MANIFEST);
    symlink("..2026_11_28_20_00_00.1", dir.join("..data")).expect("symlink");
    symlink("..data/a.yaml", dir.join("a.yaml")).expect("symlink");
    let mut w = watch(&dir);

    configmap_generation(
        &dir,
        "..2026_11_28_20_05_00.2",
        "name: a\nprovider: hcaptcha\n",
    );
    swap_symlink(
        &dir.join("..data"),
        std::path::Path::new("..2026_11_28_20_05_00.2"),
    );
    std::fs::remove_dir_all(dir.join("..2026_11_28_20_00_00.1")).expect("rm old generation");
    w.expect_hint("..data swap").await;
    w.settle().await;

    configmap_generation(&dir, "..2026_11_28_20_10_00.3", MANIFEST);
    swap_symlink(
        &dir.join("..data"),
        std::path::Path::new("..2026_11_28_20_10_00.3"),
    );
    std::fs::remove_dir_all(dir.join("..2026_11_28_20_05_00.2")).expect("rm old generation");
    w.expect_hint("second ..data swap").await;
}

#[tokio::test]
async fn a_vanished_directory_is_a_hint_and_its_return_is_watched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("stages");
    write(&dir.join("a.yaml"), MANIFEST);
    let mut w = watch(&dir);

    std::fs::remove_dir_all(&dir).expect("rm -rf");
    w.expect_hint("directory removed").await;
    w.settle().await;

    write(&dir.join("a.yaml"), MANIFEST);
    w.expect_hint("directory back").await;
    w.settle().await;

    write(&dir.join("b.yaml"), MANIFEST);
    w.expect_hint("a change in the returned directory").await;
}

#[tokio::test]
async fn a_directory_that_does_not_exist_yet_is_watched_when_it_appears() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("stages");
    let mut w = watch(&dir);
    write(&dir.join("a.yaml"), MANIFEST);
    w.expect_hint("directory created").await;
    w.settle().await;
    write(&dir.join("a.yaml"), "name: a\nprovider: hcaptcha\n");
    w.expect_hint("a change in it").await;
}

#[tokio::test]
async fn a_rotated_secret_file_outside_dir_is_a_hint_and_its_neighbours_are_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("stages");
    write(&dir.join("a.yaml"), MANIFEST);
    let key = tmp.path().join("secrets/turnstile.key");
    write(&key, "old-key");
    write(&tmp.path().join("secrets/unrelated"), "x");
    let mut w = watch(&dir);
    w.watcher.set_extra_paths(vec![key.clone()]);
    // Let the new watch be established before changing anything.
    w.expect_quiet("setting the extra paths").await;

    write(&tmp.path().join("secrets/unrelated"), "y");
    w.expect_quiet("a file beside the secret").await;

    write(&key, "new-key");
    w.expect_hint("secret rewritten").await;
    w.settle().await;
    atomic_save(&key, "newer-key");
    w.expect_hint("secret replaced by rename").await;
    w.settle().await;

    w.watcher.set_extra_paths(Vec::new());
    w.expect_quiet("clearing the extra paths").await;
    write(&key, "ignored");
    w.expect_quiet("a file no longer referenced").await;
}

#[tokio::test]
async fn a_kubernetes_secret_volume_rotation_is_a_hint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("stages");
    write(&dir.join("a.yaml"), MANIFEST);
    let volume = tmp.path().join("captcha-keys");
    write(&volume.join("..2026_11_28_20_00_00.1/turnstile"), "old-key");
    symlink("..2026_11_28_20_00_00.1", volume.join("..data")).expect("symlink");
    symlink("..data/turnstile", volume.join("turnstile")).expect("symlink");
    let mut w = watch(&dir);
    w.watcher.set_extra_paths(vec![volume.join("turnstile")]);
    w.expect_quiet("setting the extra paths").await;

    write(&volume.join("..2026_11_28_20_05_00.2/turnstile"), "new-key");
    swap_symlink(
        &volume.join("..data"),
        std::path::Path::new("..2026_11_28_20_05_00.2"),
    );
    std::fs::remove_dir_all(volume.join("..2026_11_28_20_00_00.1")).expect("rm old");
    w.expect_hint("secret volume swap").await;
}
