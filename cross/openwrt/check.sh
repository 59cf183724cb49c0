#!/usr/bin/env bash
# cross/openwrt/check.sh [ARCH [CPU_TYPE]]: smoke test of the package Makefile without an
# OpenWrt tree. A stand-in rules.mk/package.mk defines just what the Makefile uses
# (INSTALL_*, PKG_BUILD_DIR, BuildPackage running Build/Compile and Package/atorrent/install
# into a staging directory); the staged files are then listed and compared with their
# sources. ARCH defaults to mipsel (needs `make cross TARGET=mipsel-unknown-linux-musl`).
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-mipsel}
cpu=${2:-}
root=$PWD
fake=$(mktemp -d "${TMPDIR:-/tmp}/atorrent-openwrt.XXXXXX")
trap 'rm -rf "$fake"' EXIT
mkdir -p "$fake/include" "$fake/stage"
cat >"$fake/rules.mk" <<MK
INCLUDE_DIR:=$fake/include
ARCH:=$arch
CONFIG_CPU_TYPE:=$cpu
MK
cat >"$fake/include/package.mk" <<'MK'
PKG_BUILD_DIR:=$(TOPDIR)/build/$(PKG_NAME)-$(PKG_VERSION)
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_CONF:=install -m0600
define BuildPackage
all:
	$$(Build/Prepare)
	$$(Build/Compile)
	$$(call Package/$(1)/install,$(TOPDIR)/stage)
	@echo "package $(1) $(PKG_VERSION)-$(PKG_RELEASE) ($(ATORRENT_TARGET)), conffiles: $$(strip $$(Package/$(1)/conffiles))"
endef
MK
make -s -C cross/openwrt/atorrent TOPDIR="$fake" ATORRENT_ROOT="$root"
(cd "$fake/stage" && find . -type f -printf '%m %s %p\n' | sort -k3)
cmp "$fake/stage/etc/init.d/atorrent" scripts/init/atorrent.procd
cmp "$fake/stage/etc/config/atorrent" scripts/init/atorrent.uci
echo "cross/openwrt: ok"
