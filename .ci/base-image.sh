#!/usr/bin/env bash
# A local Python base image for machines that reach Debian's packages but no image registry:
# debootstrap of Debian bookworm (the Dockerfile's release), minimal variant, no docs, with
# python3 and python3-venv, imported with `docker import`. The Dockerfile builds on it with
#   docker build --build-arg PYTHON_IMAGE="$(.ci/base-image.sh)" ...
# The tag carries a hash of this recipe (and of the host's extra CA certificates, which the
# image trusts like the host does), so a built base is reused until the recipe changes.
# Prints the tag on its last line. Takes a few minutes the first time, nothing afterwards.
set -euo pipefail

RELEASE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_CAS=/usr/local/share/ca-certificates

recipe_hash() {
    {
        cat "$0"
        echo "$MIRROR"
        if [ -d "$LOCAL_CAS" ]; then
            find "$LOCAL_CAS" -type f -name '*.crt' -print0 | sort -z | xargs -0r cat
        fi
    } | sha256sum | cut -c1-12
}

TAG="queueflow-base:${RELEASE}-$(recipe_hash)"
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi

for tool in debootstrap chroot tar; do
    command -v "$tool" >/dev/null || { echo "base-image: $tool is not installed" >&2; exit 1; }
done

work=$(mktemp -d /var/tmp/queueflow-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
started=$(date +%s)
echo "base-image: debootstrap $RELEASE ($PACKAGES) into $root" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$RELEASE" "$root" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -50 "$work/debootstrap.log" >&2; exit 1; }

# The host's own CA certificates (a proxy's, say): pip inside the build trusts what the host does.
if [ -d "$LOCAL_CAS" ]; then
    find "$LOCAL_CAS" -type f -name '*.crt' -exec cp {} "$root/usr/local/share/ca-certificates/" \;
fi
chroot "$root" update-ca-certificates --fresh >/dev/null 2>&1

# No docs, man pages or translations now, nor from any package installed later.
cat >"$root/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,locale,lintian}/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
echo "deb $MIRROR $RELEASE main" >"$root/etc/apt/sources.list"

tar --numeric-owner --xattrs -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $RELEASE minbase + $PACKAGES" \
    - "$TAG" >/dev/null
echo "base-image: built $TAG in $(($(date +%s) - started)) s" >&2
# Older builds of this recipe are not used any more.
docker image ls --format '{{.Repository}}:{{.Tag}}' "${TAG%%:*}" | grep -vxF "$TAG" \
    | xargs -r docker rmi >/dev/null 2>&1 || true
echo "$TAG"
