# The Python a test script needs. nixpkgs' `extraPythonPackages` option (a function of a Python package set) names
# modules the script imports, which nixpkgs' driver has in its Python. When a test picks any, its plan gets
# `python`, the interpreter of `hostPkgs.python3.withPackages extraPythonPackages`, and `python_drv`, its
# derivation, which `testrig run` builds when it is missing. A test that picks none is left alone, without
# evaluating anything of `hostPkgs`.
#
# Applied after either extractor (builtins.nixosTestPlan or plan.nix) by `testrig plan` and `testrig run`, and by
# lib.mkCheck; builtins only, self-contained (the runner passes it to `nix eval --apply` as text).
#
#   import ./python-env.nix test plan   # the plan, or a set's { plans; skipped; }, with `python` where needed
let
  withPython =
    test: plan:
    let
      config = if builtins.isAttrs test && builtins.isAttrs (test.config or null) then test.config else { };
      # The default `ps: [ ]` never looks at its argument, so nothing of hostPkgs is evaluated for it.
      picked =
        if config ? extraPythonPackages && config ? hostPkgs then
          config.extraPythonPackages config.hostPkgs.python3Packages
        else
          [ ];
      env = config.hostPkgs.python3.withPackages config.extraPythonPackages;
    in
    if plan ? python || picked == [ ] then
      plan
    else
      plan
      // {
        python = "${env}/bin/python3";
        python_drv = builtins.unsafeDiscardStringContext env.drvPath;
      };
in
test: plan:
if plan ? plans then
  plan // { plans = builtins.mapAttrs (name: withPython test.${name}) plan.plans; }
else
  withPython test plan
