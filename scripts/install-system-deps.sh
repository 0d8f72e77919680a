#!/usr/bin/env bash
# Installs the Debian packages the tests need, only where they are missing:
# chromium (headless browser tests), the EGL/GL libraries VTK renders offscreen with, and cmake
# with a C/C++ compiler (the Slicer extension's CMake configure check).
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
# read the linker cache once: `ldconfig -p | grep -q` under pipefail reads as "missing" whenever
# grep exits before ldconfig has written everything (SIGPIPE; a cache over the pipe's 64 KiB)
libcache=$(ldconfig -p 2>/dev/null || true)
for lib in libEGL.so.1 libEGL_mesa.so.0 libGL.so.1 libOpenGL.so.0 libGLU.so.1 libXrender.so.1 libxkbcommon.so.0; do
  grep -qF "$lib" <<<"$libcache" && continue
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
# cmake and C/C++ compilers: Testing/test_slicer_module_packaging.py configures the extension's
# CMakeLists.txt files (project() looks for both compilers) and skips that check without them
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
# Mesa's software rasteriser (llvmpipe) renders offscreen where there is no GPU
compgen -G "/usr/lib/*/dri/*swrast_dri.so" >/dev/null || need+=(libgl1-mesa-dri)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "Installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" libgl1-mesa-dri >/dev/null
