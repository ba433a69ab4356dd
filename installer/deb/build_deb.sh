#!/usr/bin/env bash
# Make hilum_<version>_amd64.deb from a built bundle (installer/build_bundle.sh).
#
#   bash installer/deb/build_deb.sh [--bundle DIST/hilum] [--out DIR] [--version V] [--compress xz|zstd|gzip|none]
#
# Installs: /opt/hilum (the bundle), /usr/bin/hilum -> /opt/hilum/hilum, the desktop entry
# (Exec=hilum gui %F; .dcm files and DICOMDIR), a shared-mime-info package (application/dicom: *.dcm and
# "DICM" at offset 128; application/x-dicomdir: DICOMDIR), the icon in the hicolor sizes.  postinst and
# postrm refresh the desktop, MIME and icon caches when those tools are installed.  Built as root-owned
# files by dpkg-deb --root-owner-group (no fakeroot needed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bundle="$repo/dist/hilum"
out="$repo/dist"
version=""
compress="xz"
while (($#)); do
  case "$1" in
    --bundle) bundle="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --compress) compress="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_deb.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$bundle/hilum" ]] || { echo "build_deb.sh: no bundle at $bundle (run installer/build_bundle.sh)" >&2; exit 1; }
if [[ -z "$version" ]]; then
  version="$("$bundle/hilum" --version | awk '{print $2}')"
fi
arch="$(dpkg --print-architecture)"
mkdir -p "$out"
stage="$(mktemp -d "${TMPDIR:-/tmp}/hilum-deb.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
install -d "$root/DEBIAN" "$root/opt" "$root/usr/bin" "$root/usr/share/applications" \
  "$root/usr/share/mime/packages" "$root/usr/share/doc/hilum" "$root/usr/share/icons/hicolor/scalable/apps"
cp -a "$bundle" "$root/opt/hilum"
chmod -R u+rwX,go+rX,go-w "$root/opt/hilum"
ln -s /opt/hilum/hilum "$root/usr/bin/hilum"
install -m 0644 "$here/hilum.desktop" "$root/usr/share/applications/hilum.desktop"
install -m 0644 "$here/hilum-mime.xml" "$root/usr/share/mime/packages/hilum.xml"
icons="$repo/resources/icons"
install -m 0644 "$icons/hilum.svg" "$root/usr/share/icons/hicolor/scalable/apps/hilum.svg"
# The node as a service (installer/SERVER.md): the unit, its user and folders; installed, not enabled
# (a reading station needs none): systemd-sysusers; systemd-tmpfiles --create; systemctl enable --now hilum
install -D -m 0644 "$repo/installer/linux/hilum.service" "$root/usr/lib/systemd/system/hilum.service"
install -D -m 0644 "$repo/installer/linux/hilum.sysusers.conf" "$root/usr/lib/sysusers.d/hilum.conf"
install -D -m 0644 "$repo/installer/linux/hilum.tmpfiles.conf" "$root/usr/lib/tmpfiles.d/hilum.conf"
install -D -m 0644 "$repo/installer/linux/port-104.conf" "$root/usr/share/doc/hilum/examples/port-104.conf"
for size in 16 24 32 48 64 128 256 512; do
  install -d "$root/usr/share/icons/hicolor/${size}x${size}/apps"
  install -m 0644 "$icons/hilum-$size.png" "$root/usr/share/icons/hicolor/${size}x${size}/apps/hilum.png"
done
cat > "$root/usr/share/doc/hilum/copyright" <<TXT
Hilum $version — DICOM workstation and mini-PACS. License: MIT.
The bundle in /opt/hilum carries Python and third-party libraries under their own licenses
(their license files are in /opt/hilum/_internal/*.dist-info and beside each library).
TXT

# Depends: what the bundle does not carry.  From ldd over every shared library in the bundle, the ones
# resolved outside it (see installer/DESKTOP.md): glibc, the GL/EGL dispatch libraries (never bundled: they
# must match the machine's driver), libxcb (X connection), libdrm; fontconfig's configuration and a font.
# Wayland's client libraries only for Qt's wayland platform plug-in (X11/XWayland works without them).
installed_kb="$(du -sk --apparent-size "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<TXT
Package: hilum
Version: $version
Architecture: $arch
Maintainer: Hilum developers <hilum@localhost>
Section: science
Priority: optional
Installed-Size: $installed_kb
Depends: libc6 (>= 2.36), libgl1, libegl1, libglx0, libxcb1, libdrm2, fontconfig-config, fonts-dejavu-core | fonts-liberation2
Recommends: libgl1-mesa-dri, libegl-mesa0, libwayland-client0, libwayland-cursor0, libwayland-egl1, shared-mime-info, desktop-file-utils
Homepage: https://github.com/hilum/hilum
Description: DICOM workstation and mini-PACS
 Hilum views, compares and reports DICOM studies (2D, MPR, 3D, priors, AI
 plug-ins) and runs a small PACS node (C-STORE, Q/R, MWL, DICOMweb, HL7).
 This package is a self-contained bundle in /opt/hilum with its own Python;
 "hilum" opens the workstation, "hilum serve" runs the node headless.
TXT
for script in postinst postrm; do
  cat > "$root/DEBIAN/$script" <<'TXT'
#!/bin/sh
set -e
# Refresh the desktop's caches so that .dcm files and DICOMDIR offer Hilum (only where the tools exist).
if command -v update-desktop-database >/dev/null 2>&1; then update-desktop-database -q /usr/share/applications || true; fi
if command -v update-mime-database >/dev/null 2>&1; then update-mime-database /usr/share/mime || true; fi
if command -v gtk-update-icon-cache >/dev/null 2>&1; then gtk-update-icon-cache -q -t -f /usr/share/icons/hicolor || true; fi
exit 0
TXT
  chmod 0755 "$root/DEBIAN/$script"
done
deb="$out/hilum_${version}_${arch}.deb"
SECONDS=0
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
printf 'build_deb.sh: %s (%s MB, %s compression, %s s; installed %s MB)\n' "$deb" \
  "$(( $(stat -c %s "$deb") / 1048576 ))" "$compress" "$SECONDS" "$(( installed_kb / 1024 ))"
