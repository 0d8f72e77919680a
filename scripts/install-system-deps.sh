#!/usr/bin/env bash
# Installs the Debian packages the tests need, only where they are missing:
# chromium (headless browser tests) and the EGL/GL libraries VTK renders offscreen with.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
for lib in libEGL.so.1 libEGL_mesa.so.0 libGL.so.1 libOpenGL.so.0 libGLU.so.1 libXrender.so.1 libxkbcommon.so.0; do
  ldconfig -p 2>/dev/null | grep -q "$lib" && continue
  case $lib in
    libEGL.so.1) need+=(libegl1) ;;
    libEGL_mesa.so.0) need+=(libegl-mesa0) ;;  # the EGL vendor library VTK offscreen (surfaceless) uses
    libGL.so.1) need+=(libgl1) ;;
    libOpenGL.so.0) need+=(libopengl0) ;;
    libGLU.so.1) need+=(libglu1-mesa) ;;
    libXrender.so.1) need+=(libxrender1) ;;
    libxkbcommon.so.0) need+=(libxkbcommon0) ;;
  esac
done
# Mesa's software rasteriser (llvmpipe) renders offscreen where there is no GPU
compgen -G "/usr/lib/*/dri/*swrast_dri.so" >/dev/null || need+=(libgl1-mesa-dri)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "Installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" libgl1-mesa-dri >/dev/null
