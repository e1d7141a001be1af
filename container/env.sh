# Sourced by container/build and container/test: buildah reads this
# directory's containers.conf, and keeps its images under the build's target
# directory (vfs), not in the system's storage.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/container
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
image=${STAGESYNC_IMAGE:-localhost/stagesync:$version}
archive=$out/stagesync-$version.oci.tar
mkdir -p "$out/storage"
sed -e "s|@RUNROOT@|$out/storage/run|" -e "s|@GRAPHROOT@|$out/storage/graph|" \
  "$root/container/storage.conf" > "$out/storage.conf"
export CONTAINERS_CONF=$root/container/containers.conf
export CONTAINERS_STORAGE_CONF=$out/storage.conf
