#!/usr/bin/env bash
# Loads the plugin into the Nix of tests/env/nix.sh and checks builtins.nixosTestPlan on plugin/smoke.nix: each test
# generation, a set of tests with non-tests in it, a node that throws, and a value that is not a test.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${TESTRIG_NIX_PREFIX:-$("$repo/tests/env/nix.sh" | tail -n 1)}
plugin=$(TESTRIG_NIX_PREFIX=$prefix "$repo/plugin/build.sh" | tail -n 1)
smoke=$repo/plugin/smoke.nix
failures=0

plan() {
  "$prefix/bin/nix" --option plugin-files "$plugin" eval --json --impure \
    --expr "builtins.nixosTestPlan (with import $smoke; $1)"
}

check() {
  local what=$1 attr=$2 filter=$3 out
  if out=$(plan "$attr" 2>&1) && jq -e "$filter" <<<"$out" >/dev/null; then
    echo "ok: $what"
  else
    echo "FAILED: $what"; echo "$out" | sed 's/^/    /'; failures=$((failures + 1))
  fi
}

# check_error WHAT EXPR PATTERN...: evaluating fails, and the message has every pattern.
check_error() {
  local what=$1 attr=$2 out pattern
  shift 2
  if ! out=$(plan "$attr" 2>&1); then
    for pattern in "$@"; do
      grep -q -- "$pattern" <<<"$out" || break
      pattern=
    done
  else
    pattern="an error"
  fi
  if [ -z "$pattern" ]; then
    echo "ok: $what"
  else
    echo "FAILED: $what (expected '$pattern')"; echo "$out" | sed 's/^/    /'
    failures=$((failures + 1))
  fi
}

check "26.05 runTest (driverConfiguration)" withDriverConfiguration '
  .schema == "testrig-plan/1" and .name == "login" and .system == "x86_64-linux" and .global_timeout == 600
  and (.test_drv | endswith("-vm-test-run-login.drv")) and (.test_script | startswith("/nix/store/"))
  and (.vms.server.start_script | test("^/nix/store/[a-z0-9]{32}-nixos-vm/bin/run-server-vm$"))
  and (.vms.server.drv | endswith("-nixos-vm.drv")) and .vms.server.vlans == [1, 2] and .vms.client.node_number == 1
  and .vms.server.memory_mb == 512 and .vlans == [1, 2] and (.cache_key | length) == 32'
check "runTest before 26.05 (testScript a function of nodes)" runTest '
  .name == "web" and .test_script_text == "machine.succeed('"'"'true'"'"') # 512"
  and (.vms.machine.start_script | endswith("/bin/run-machine-vm")) and .global_timeout == 3600'
check "a node with vlans = [ ] gets no vlan (not the default [ 1 ])" \
  'let m = runTest.config.nodes.machine; in runTest // { config = runTest.config // {
     nodes.machine = m // { virtualisation = m.virtualisation // { vlans = [ ]; }; }; }; }' \
  '.vms.machine.vlans == [] and .vlans == []'
check "legacy make-test-python.nix" legacy '.name == "old" and (.vms.machine.drv | endswith(".drv"))'
check "a set of tests, non-tests skipped with a reason" checks '
  (.plans | keys) == ["legacy", "runTest", "withDriverConfiguration"]
  and (.skipped.fmt | test("derivation")) and (.skipped.answer | test("integer"))'
check_error "a node that throws names the node and the test" brokenNode \
  'while evaluating node `server` of test `broken`' "the node's configuration does not evaluate"
check_error "a value that is not a test" 'checks.answer' 'expects a NixOS test'
check_error "a wrongly typed option names the node" \
  'let m = runTest.config.nodes.machine; in runTest // { config = runTest.config // {
     nodes.machine = m // { virtualisation = m.virtualisation // { memorySize = "big"; }; }; }; }' \
  'node `machine` of test `web`' 'expected an integer but found a string: "big"'
check_error "a plan Rust rejects is a positioned Nix error" \
  'runTest // { config = runTest.config // { nodes = { }; }; }' \
  'cannot make a test plan: `vms` is empty'

# The result keeps the start scripts' string context: a derivation using the plan depends on the VMs.
ctx=$("$prefix/bin/nix" --option plugin-files "$plugin" eval --json --impure --expr "
  builtins.attrNames (builtins.getContext (builtins.nixosTestPlan (import $smoke).withDriverConfiguration).vms.server.start_script)")
if jq -e 'length == 1 and (.[0] | endswith("-nixos-vm.drv"))' <<<"$ctx" >/dev/null; then
  echo "ok: start_script keeps its string context"
else
  echo "FAILED: start_script context: $ctx"; failures=$((failures + 1))
fi

# A plugin built for another Nix says so and registers nothing, instead of crashing nix. The other version is a
# prefix of the running one (2.26 for 2.26.3): only a development build's suffix may follow the built version.
running=$("$prefix/bin/nix" --version | awk '{print $NF}')
claimed=${running%.*}
other=$(TESTRIG_NIX_PREFIX=$prefix TESTRIG_PLUGIN_OUT="$repo/target/plugin/libtestrig-other-nix.so" \
  TESTRIG_PLUGIN_CXXFLAGS="-DTESTRIG_BUILT_FOR_NIX=\"$claimed\"" "$repo/plugin/build.sh" | tail -n 1)
if out=$("$prefix/bin/nix" --option plugin-files "$other" eval --expr 'builtins ? nixosTestPlan' 2>&1) \
  && grep -q "built for Nix $claimed but was loaded into Nix $running" <<<"$out" && grep -qx false <<<"$out"; then
  echo "ok: a plugin built for another Nix version explains and stays out"
else
  echo "FAILED: version mismatch"; echo "$out" | sed 's/^/    /'; failures=$((failures + 1))
fi

# nix-compat.hh's branches for newer Nix versions compile, instantiated with types of their upstream shapes.
cflags=$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags nix-expr nix-store nix-util nix-main)
# shellcheck disable=SC2086 # pkg-config output is a list of flags
if out=$("${CXX:-c++}" -std=c++20 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
  $cflags -DTESTRIG_BUILT_FOR_NIX='"check"' -I"$repo/plugin" "$repo/plugin/compat-check.cc" 2>&1); then
  echo "ok: nix-compat.hh compiles both ways of each Nix API change (compat-check.cc)"
else
  echo "FAILED: compat-check.cc"; echo "$out" | sed 's/^/    /'; failures=$((failures + 1))
fi

[ "$failures" = 0 ] || { echo "$failures smoke check(s) failed"; exit 1; }
echo "all plugin smoke checks passed"
