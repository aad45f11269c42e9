#!/usr/bin/env bash
# System packages the project needs on a Debian machine: the build tools for the patched llama.cpp
# (cmake, ninja, patch, ccache for fast rebuilds), the aarch64 cross compilers (a test compiles the CPU
# kernels for ARM machines) and apt's index, so the default text packages (r-cran-janeaustenr, dict-gcide,
# fortunes, debian-reference-en) can be downloaded. Needs root; does nothing that is already in place.
set -euo pipefail
need=()
for tool in cmake ninja patch ccache aarch64-linux-gnu-gcc aarch64-linux-gnu-g++; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ] || ! apt-cache show r-cran-janeaustenr >/dev/null 2>&1; then
  apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for tool in "${need[@]}"; do
    case "$tool" in
      ninja) pkgs+=(ninja-build) ;;
      aarch64-linux-gnu-gcc) pkgs+=(gcc-aarch64-linux-gnu) ;;
      aarch64-linux-gnu-g++) pkgs+=(g++-aarch64-linux-gnu) ;;
      *) pkgs+=("$tool") ;;
    esac
  done
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
fi
