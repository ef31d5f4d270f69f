# testrig's pure-Nix plan extractor: the same plans as the plugin's `builtins.nixosTestPlan`, for where the plugin
# cannot be loaded (a sandboxed `nix flake check`, a Nix the plugin was not built for). Builtins only: no nixpkgs,
# no import-from-derivation, nothing built; start scripts stay store paths with their string context.
#
#   import ./plan.nix { test = pkgs.testers.runNixOSTest { ... }; }   # one plan (schema testrig-plan/1)
#   import ./plan.nix { test = self.checks.x86_64-linux; }            # { plans = { <name> = plan; }; skipped = { <name> = reason; }; }
#   (import ./plan.nix).one test / (import ./plan.nix).set tests      # the two cases by name
#
# It reads what the plugin reads (plugin/testrig-plugin.cc; the three generations of nixpkgs' test framework are
# told apart the same way) and fills in what testrig's Rust side fills in (cxx-bridge/src/validate.rs): `schema`,
# the defaults of `global_timeout`, `enable_ssh_backdoor` and `enable_ocr`, node numbers in the sorted order of
# the machine names, each node's vlans (default [1], sorted, without duplicates) and their union. It leaves out
# `cache_key`, which the runner computes, and does not validate: `testrig` validates every plan it reads, from
# either extractor, with the same code. tests/suite.d/plan-extractors keeps the two in agreement on
# tests/fixtures.
#
# Self-contained (no imports), so that the runner can pass it to `nix eval --apply` as text.
let
  inherit (builtins)
    addErrorContext
    attrNames
    attrValues
    concatMap
    elem
    filter
    foldl'
    genList
    getContext
    hasContext
    head
    isAttrs
    length
    lessThan
    listToAttrs
    mapAttrs
    sort
    tail
    typeOf
    unsafeDiscardStringContext
    ;

  schema = "testrig-plan/1";
  defaultGlobalTimeout = 3600;

  has =
    path: v:
    path == [ ] || (isAttrs v && v ? ${head path} && has (tail path) v.${head path});
  get = path: v: foldl' (acc: name: acc.${name}) v path;
  # `{ field = read value; }` when `path` exists below `v`, else nothing (the plugin's `copy`).
  copy =
    field: path: v: read:
    if has path v then { ${field} = read (get path v); } else { };
  need =
    path: v: subject:
    if has path v then
      get path v
    else
      throw "attribute `${builtins.concatStringsSep "." path}` missing, while evaluating ${subject}";
  id = x: x;

  # Nix's own words for a value's type (showType), for the reasons a value is not a test.
  describe =
    v:
    let
      t = typeOf v;
    in
    if t == "string" && hasContext v then
      "a string with context"
    else
      {
        int = "an integer";
        bool = "a Boolean";
        string = "a string";
        path = "a path";
        null = "null";
        set = "a set";
        list = "a list";
        lambda = "a function";
        float = "a float";
      }
      .${t};

  isDerivation = v: isAttrs v && (v.type or null) == "derivation";

  # The generation of nixpkgs' test framework a value comes from, by what it carries (as the plugin decides).
  shapeOf =
    t:
    if !isAttrs t then
      null
    else if has [ "config" "driverConfiguration" ] t then
      "driverConfiguration"
    else if has [ "config" "nodes" ] t then
      "runTest"
    else if has [ "nodes" ] t && has [ "driver" "testScript" ] t then
      "legacy"
    else
      null;

  whyNotATest =
    t:
    if !isAttrs t then
      "${describe t}, not a NixOS test"
    else if isDerivation t then
      "a derivation without `config.nodes`, not a NixOS test"
    else
      "an attribute set without `config.nodes`, not a NixOS test";

  label =
    t: shape: fallback:
    let
      path = if shape == "legacy" then [ "driver" "testName" ] else [ "config" "name" ];
      name = get path t;
    in
    if has path t && typeOf name == "string" then "test `${name}`" else fallback;

  # The derivation a string's context says builds it (the last one, as the plugin takes it).
  builtBy =
    s:
    let
      built = filter (p: (getContext s).${p} ? outputs) (attrNames (getContext s));
    in
    if built == [ ] then { } else { drv = foldl' (_: p: p) null built; };

  # Facts every generation keeps in a node's NixOS configuration.
  nodeFacts =
    node:
    let
      vlans =
        (if has [ "virtualisation" "vlans" ] node then node.virtualisation.vlans else [ ])
        ++ (
          if has [ "virtualisation" "interfaces" ] node then
            map (i: i.vlan) (filter (i: has [ "vlan" ] i) (attrValues node.virtualisation.interfaces))
          else
            [ ]
        );
    in
    copy "memory_mb" [ "virtualisation" "memorySize" ] node id
    // copy "cores" [ "virtualisation" "cores" ] node id
    // copy "node_number" [ "virtualisation" "test" "nodeNumber" ] node id
    # `vlans = [ ]` means no vlan NIC: written whenever the node has the options, so Rust's default `[ 1 ]` is
    # only for nodes without them.
    // (
      if has [ "virtualisation" "vlans" ] node || has [ "virtualisation" "interfaces" ] node then
        { inherit vlans; }
      else
        { }
    );

  # A VM from a node's NixOS configuration: the start script is the main program of `system.build.vm`.
  vmFromNode =
    node: name: subject:
    let
      build = need [ "system" "build" "vm" ] node subject;
      out = toString build;
      program = if has [ "meta" "mainProgram" ] build then build.meta.mainProgram else "run-${name}-vm";
    in
    {
      inherit name;
      start_script = "${out}/bin/${program}";
    }
    // builtBy out
    // nodeFacts node;

  configFacts =
    config:
    copy "name" [ "name" ] config id
    // copy "test_script_text" [ "testScriptString" ] config id
    // copy "global_timeout" [ "globalTimeout" ] config id
    // copy "enable_ssh_backdoor" [ "sshBackdoor" "enable" ] config id
    // copy "enable_ocr" [ "enableOCR" ] config id
    // copy "force_accel" [ "qemu" "forceAccel" ] config id
    // copy "extra_driver_args" [ "extraDriverArgs" ] config id;

  # nixpkgs 26.05: the driver's own configuration, with per-node facts from the nodes' configurations.
  driverConfigurationFacts =
    config: subject:
    let
      dc = config.driverConfiguration;
      nodes = if has [ "nodes" ] config then config.nodes else null;
      machines =
        kind:
        if has [ kind ] dc then
          {
            ${kind} = mapAttrs (
              name: m:
              let
                machineSubject = "node `${name}` of ${subject}";
                script = toString (need [ "start_script" ] m machineSubject);
              in
              addErrorContext "while evaluating ${machineSubject}" (
                {
                  name = need [ "name" ] m machineSubject;
                  start_script = script;
                }
                // builtBy script
                // (if nodes != null && has [ name ] nodes then nodeFacts nodes.${name} else { })
              )
            ) dc.${kind};
          }
        else
          { };
    in
    configFacts config
    // machines "vms"
    // machines "containers"
    // copy "global_timeout" [ "global_timeout" ] dc id
    // copy "enable_ssh_backdoor" [ "enable_ssh_backdoor" ] dc id
    // copy "test_script" [ "test_script" ] dc toString;

  # runTest before 26.05 (`nodes.<n>` is a NixOS configuration) and legacy tests (`nodes.<n>.config`).
  nodesFacts = nodes: legacy: subject: {
    vms = mapAttrs (
      name: n:
      let
        nodeSubject = "node `${name}` of ${subject}";
      in
      addErrorContext "while evaluating ${nodeSubject}" (
        vmFromNode (if legacy then need [ "config" ] n nodeSubject else n) name nodeSubject
      )
    ) nodes;
  };

  factsOf =
    t: shape: subject:
    (
      if shape == "legacy" then
        nodesFacts (need [ "nodes" ] t subject) true subject
        // copy "name" [ "driver" "testName" ] t id
        // copy "test_script_text" [ "driver" "testScript" ] t id
      else
        let
          config = need [ "config" ] t subject;
        in
        if shape == "driverConfiguration" then
          driverConfigurationFacts config subject
        else
          nodesFacts (need [ "nodes" ] config subject) false subject // configFacts config
    )
    // (
      if isDerivation t then
        copy "system" [ "system" ] t id
        // copy "test_drv" [ "drvPath" ] t unsafeDiscardStringContext
      else
        { }
    );

  # `test_script_inputs`: the derivation outputs named by the string context of the script that will run (its text,
  # else its file), which `nix eval --json` drops. Opaque paths and whole-closure (`drvPath`) references are in the
  # store once evaluated, so only built outputs are listed.
  scriptInputs =
    facts:
    let
      context = getContext (facts.test_script_text or facts.test_script or "");
      inputs = sort lessThan (
        concatMap (drv: map (output: "${drv}^${output}") (context.${drv}.outputs or [ ])) (attrNames context)
      );
    in
    if inputs == [ ] then { } else { test_script_inputs = inputs; };

  sortUnique = list: foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ] (sort lessThan list);

  # What the Rust side adds to the facts (validate.rs): defaults, node numbers, vlans; no cache key.
  complete =
    facts:
    let
      names = attrNames facts.vms;
      numbers = listToAttrs (
        genList (i: {
          name = builtins.elemAt names i;
          value = i + 1;
        }) (length names)
      );
      vms = mapAttrs (
        name: vm:
        vm
        // {
          node_number = vm.node_number or numbers.${name};
          vlans = sortUnique (vm.vlans or [ 1 ]);
        }
      ) facts.vms;
      extra = facts.extra_driver_args or [ ];
      containers = facts.containers or { };
    in
    removeAttrs facts [
      "extra_driver_args"
      "containers"
      "force_accel"
    ]
    // {
      inherit schema vms;
      global_timeout = facts.global_timeout or defaultGlobalTimeout;
      enable_ssh_backdoor = facts.enable_ssh_backdoor or false;
      enable_ocr = facts.enable_ocr or false;
      vlans = sortUnique (builtins.concatMap (vm: vm.vlans) (attrValues vms));
    }
    // (if extra == [ ] then { } else { extra_driver_args = extra; })
    // (if containers == { } then { } else { inherit containers; })
    // (if facts.force_accel or false then { force_accel = true; } else { });

  # The machines are evaluated first, as the plugin does, so that a node that does not evaluate is named as the
  # cause (rather than the test derivation, which depends on every node).
  planOf =
    t: shape: subject:
    addErrorContext "while making the plan of ${subject}" (
      let
        found = factsOf t shape subject;
        facts = found // scriptInputs found;
      in
      builtins.deepSeq facts.vms (complete facts)
    );

  one =
    test:
    let
      shape = shapeOf test;
    in
    if shape == null then
      throw "testrig's nix/plan.nix expects a NixOS test (what runNixOSTest or nixosTest returns), but found ${whyNotATest test}"
    else
      planOf test shape (label test shape "the test passed to testrig's nix/plan.nix");

  set =
    tests:
    let
      shapes = mapAttrs (
        name: t: addErrorContext "while evaluating the attribute `${name}` of the tests" (shapeOf t)
      ) tests;
      names = attrNames tests;
      testNames = filter (name: shapes.${name} != null) names;
      otherNames = filter (name: shapes.${name} == null) names;
    in
    {
      plans = listToAttrs (
        map (name: {
          inherit name;
          value = addErrorContext "while evaluating the attribute `${name}` of the tests" (
            planOf tests.${name} shapes.${name} "test `${name}`"
          );
        }) testNames
      );
      skipped = listToAttrs (
        map (name: {
          inherit name;
          value = whyNotATest tests.${name};
        }) otherNames
      );
    };

  # Like the builtin: a test gives its plan, an attribute set of tests gives `{ plans; skipped; }`.
  auto =
    test:
    if shapeOf test != null then
      one test
    else if isAttrs test && !isDerivation test then
      set test
    else
      throw "testrig's nix/plan.nix expects a NixOS test (what runNixOSTest or nixosTest returns) or an attribute set of them (such as a flake's checks.<system>), but found ${whyNotATest test}";
in
{
  __functor = _: { test }: auto test;
  inherit one set auto;
}
