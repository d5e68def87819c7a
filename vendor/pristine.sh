# Sourced by check.sh and new-patch.sh: `pristine DEST` copies crates.io's
# pingora-{core,proxy,http} 0.9.1 to DEST/<crate> (fetching them first when
# the registry has none: the workspace builds the vendored copies) and
# applies vendor/patches/* in order. Run from the repository root.
version=0.9.1
crates=(pingora-core pingora-proxy pingora-http)
pristine() {
  local dest=$1 registry="${CARGO_HOME:-$HOME/.cargo}/registry/src" crate p
  for crate in "${crates[@]}"; do
    if ! ls -d "$registry"/*/"$crate-$version" >/dev/null 2>&1; then
      [ -d "$dest/fetch" ] || cargo new -q --lib "$dest/fetch"
      (cd "$dest/fetch" && cargo add -q "$crate@=$version" --no-default-features && cargo fetch -q)
    fi
    cp -r "$(ls -d "$registry"/*/"$crate-$version" | head -1)" "$dest/$crate"
  done
  rm -rf "$dest/fetch"
  for p in vendor/patches/*.patch; do
    patch -s -d "$dest" -p1 < "$p"
  done
}
