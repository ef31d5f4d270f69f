// builtins.nixosTestPlan: turns an evaluated NixOS test (what runNixOSTest or nixosTest returns), or an attribute
// set of them such as a flake's checks.<system>, into testrig plans (schema testrig-plan/1).
//
// This file only walks Nix values. It forces the attributes a plan needs, writes what it found as one JSON document
// (the "facts" of cxx-bridge/src/facts.rs) and hands that to Rust, which validates it and completes the plan.
// Nothing is built and nothing is imported from a derivation: start scripts are output paths of derivations that are
// only instantiated, and keep their string context in the result.

// Nix's headers, and what differs between the Nix versions the plugin builds against.
#include "nix-compat.hh"

#include <nlohmann/json.hpp>

#include "rust/cxx.h"
#include "testrig-bridge/src/bridge.rs.h"

#include <cctype>
#include <cstdio>
#include <map>
#include <set>

namespace testrig {

using namespace nix;
using json = nlohmann::json;

/** The generations of nixpkgs' test framework, told apart by what their results carry. */
enum class Shape {
    NotATest,
    /** runTest since nixpkgs 26.05: `config.driverConfiguration`. */
    DriverConfiguration,
    /** runTest before 26.05: `config.nodes.<n>` (NixOS configurations), `config.testScriptString`. */
    RunTest,
    /** make-test-python.nix before runTest (nixpkgs 22.05 and older): `nodes.<n>.config`, `driver.testScript`. */
    Legacy,
};

/** "while evaluating `path` of <subject>", the context Nix prints under an error. */
static std::string evaluating(std::string_view path, const std::string & subject)
{
    return "while evaluating `" + std::string(path) + "` of " + subject;
}

/**
 * One call of the builtin. Every read names what it reads and whose it is (the "subject": "test `login`", "node
 * `server` of test `login`"), so a failure reads like a native Nix error. The string context of what was read is
 * remembered and put back on the result.
 */
struct Walker
{
    EvalState & state;
    const PosIdx pos;
    std::map<std::string, NixStringContext> contexts;

    /** The attribute at a dotted `path` below `v`, forcing every set on the way; null when one is missing. */
    Value * find(Value & v, std::string_view path, const std::string & subject)
    {
        Value * cur = &v;
        std::string walked;
        for (auto & name : tokenizeString<std::vector<std::string>>(path, ".")) {
            state.forceAttrs(*cur, pos, walked.empty() ? "while evaluating " + subject : evaluating(walked, subject));
            auto attr = cur->attrs()->get(state.symbols.create(name));
            if (!attr)
                return nullptr;
            cur = attr->value;
            walked += (walked.empty() ? "" : ".") + name;
        }
        state.forceValue(*cur, pos);
        return cur;
    }

    /** Like `find`, but a missing attribute is an error naming it. */
    Value & need(Value & v, std::string_view path, const std::string & subject)
    {
        if (auto found = find(v, path, subject))
            return *found;
        state.error<EvalError>("attribute `%s` missing, %s", path, "while evaluating " + subject)
            .atPos(pos)
            .debugThrow();
    }

    /** Whether `v` is an attribute set with a `path`, forcing only the sets on the way. */
    bool has(Value & v, std::string_view path)
    {
        Value * cur = &v;
        for (auto & name : tokenizeString<std::vector<std::string>>(path, ".")) {
            state.forceValue(*cur, pos);
            if (cur->type() != nAttrs)
                return false;
            auto attr = cur->attrs()->get(state.symbols.create(name));
            if (!attr)
                return false;
            cur = attr->value;
        }
        return true;
    }

    std::string string(Value & v, std::string_view ctx)
    {
        NixStringContext context;
        std::string s(state.forceString(v, context, pos, ctx));
        remember(s, context);
        return s;
    }

    json integer(Value & v, std::string_view ctx)
    {
        return state.forceInt(v, pos, ctx).value;
    }

    json boolean(Value & v, std::string_view ctx)
    {
        return state.forceBool(v, pos, ctx);
    }

    json strings(Value & v, std::string_view ctx)
    {
        state.forceList(v, pos, ctx);
        json out = json::array();
        for (auto elem : compat::items(v))
            out.push_back(string(*elem, ctx));
        return out;
    }

    /**
     * A path, derivation or string as a string, without copying anything to the store; `drv` is the derivation
     * that builds it when its context names one.
     */
    std::string storePath(Value & v, std::string_view ctx, std::optional<std::string> & drv)
    {
        NixStringContext context;
        std::string s(state.coerceToString(pos, v, context, ctx, false, false).toOwned());
        for (auto & elem : context)
            if (auto built = std::get_if<NixStringContextElem::Built>(&elem.raw))
                drv = state.store->printStorePath(built->drvPath->getBaseStorePath());
        remember(s, context);
        return s;
    }

    void remember(const std::string & s, const NixStringContext & context)
    {
        if (!context.empty())
            contexts[s].insert(context.begin(), context.end());
    }

    /** Sets `out[field]` to the attribute at `path` of `v`, read with `read`, when the attribute exists. */
    template<typename Read>
    void copy(json & out, const char * field, Value & v, std::string_view path, const std::string & subject, Read read)
    {
        if (auto found = find(v, path, subject))
            out[field] = (this->*read)(*found, evaluating(path, subject));
    }

    Shape shape(Value & t)
    {
        state.forceValue(t, pos);
        if (t.type() != nAttrs)
            return Shape::NotATest;
        if (has(t, "config.driverConfiguration"))
            return Shape::DriverConfiguration;
        if (has(t, "config.nodes"))
            return Shape::RunTest;
        if (has(t, "nodes") && has(t, "driver.testScript"))
            return Shape::Legacy;
        return Shape::NotATest;
    }

    std::string whyNotATest(Value & t)
    {
        if (t.type() != nAttrs)
            return showType(t) + ", not a NixOS test";
        if (state.isDerivation(t))
            return "a derivation without `config.nodes`, not a NixOS test";
        return "an attribute set without `config.nodes`, not a NixOS test";
    }

    /** The test's name for messages: its `name` option when that is a plain string, else `fallback`. */
    std::string label(Value & t, Shape shape, const std::string & fallback)
    {
        auto path = shape == Shape::Legacy ? "driver.testName" : "config.name";
        if (!has(t, path))
            return fallback;
        Value & name = *find(t, path, "test " + fallback);
        return name.type() == nString ? "test `" + std::string(name.string_view()) + "`" : fallback;
    }

    /** Facts that every generation keeps in a node's NixOS configuration. */
    void nodeFacts(json & vm, Value & node, const std::string & subject)
    {
        copy(vm, "memory_mb", node, "virtualisation.memorySize", subject, &Walker::integer);
        copy(vm, "cores", node, "virtualisation.cores", subject, &Walker::integer);
        copy(vm, "node_number", node, "virtualisation.test.nodeNumber", subject, &Walker::integer);
        // `vlans = [ ]` means no vlan NIC, so it is written whenever the node has the option (Rust fills in
        // nixpkgs' default `[ 1 ]` only when it is absent).
        json vlans = json::array();
        bool hasVlans = false;
        if (auto list = find(node, "virtualisation.vlans", subject)) {
            hasVlans = true;
            auto ctx = evaluating("virtualisation.vlans", subject);
            state.forceList(*list, pos, ctx);
            for (auto elem : compat::items(*list))
                vlans.push_back(integer(*elem, ctx));
        }
        if (auto interfaces = find(node, "virtualisation.interfaces", subject)) {
            hasVlans = true;
            auto ctx = evaluating("virtualisation.interfaces", subject);
            state.forceAttrs(*interfaces, pos, ctx);
            for (auto & i : *interfaces->attrs())
                if (auto vlan = find(*i.value, "vlan", subject))
                    vlans.push_back(integer(*vlan, ctx));
        }
        if (hasVlans)
            vm["vlans"] = vlans;
    }

    /** A VM from a node's NixOS configuration: the start script is the main program of `system.build.vm`. */
    json vmFromNode(Value & node, const std::string & name, const std::string & subject)
    {
        json vm = {{"name", name}};
        Value & build = need(node, "system.build.vm", subject);
        std::optional<std::string> drv;
        auto out = storePath(build, evaluating("system.build.vm", subject), drv);
        auto program = find(build, "meta.mainProgram", subject);
        auto script = out + "/bin/"
                      + (program ? string(*program, evaluating("system.build.vm.meta.mainProgram", subject))
                                 : "run-" + name + "-vm");
        remember(script, contexts[out]);
        vm["start_script"] = script;
        if (drv)
            vm["drv"] = *drv;
        nodeFacts(vm, node, subject);
        return vm;
    }

    /** Options of the test module, read where they exist (older nixpkgs lack some). */
    void configFacts(json & facts, Value & config, const std::string & subject)
    {
        copy(facts, "name", config, "name", subject, &Walker::string);
        copy(facts, "test_script_text", config, "testScriptString", subject, &Walker::string);
        copy(facts, "global_timeout", config, "globalTimeout", subject, &Walker::integer);
        copy(facts, "enable_ssh_backdoor", config, "sshBackdoor.enable", subject, &Walker::boolean);
        copy(facts, "enable_ocr", config, "enableOCR", subject, &Walker::boolean);
        copy(facts, "force_accel", config, "qemu.forceAccel", subject, &Walker::boolean);
        copy(facts, "extra_driver_args", config, "extraDriverArgs", subject, &Walker::strings);
    }

    /** nixpkgs 26.05: the driver's own configuration, with per-node facts from the nodes' configurations. */
    json driverConfigurationFacts(Value & config, const std::string & subject)
    {
        json facts = json::object();
        configFacts(facts, config, subject);
        Value & dc = need(config, "driverConfiguration", subject);
        auto dcSubject = "`config.driverConfiguration` of " + subject;
        Value * nodes = find(config, "nodes", subject);
        for (auto kind : {"vms", "containers"}) {
            auto machines = find(dc, kind, dcSubject);
            if (!machines)
                continue;
            state.forceAttrs(*machines, pos, evaluating(kind, dcSubject));
            facts[kind] = json::object();
            for (auto & m : machines->attrs()->lexicographicOrder(state.symbols)) {
                std::string name(state.symbols[m->name]);
                auto machineSubject = "node `" + name + "` of " + subject;
                withTrace("while evaluating " + machineSubject, [&] {
                    json machine = {{"name", string(need(*m->value, "name", machineSubject), machineSubject)}};
                    std::optional<std::string> drv;
                    auto & script = need(*m->value, "start_script", machineSubject);
                    machine["start_script"] = storePath(script, evaluating("start_script", machineSubject), drv);
                    if (drv)
                        machine["drv"] = *drv;
                    if (auto node = nodes ? find(*nodes, name, subject) : nullptr)
                        nodeFacts(machine, *node, machineSubject);
                    facts[kind][name] = machine;
                });
            }
        }
        copy(facts, "global_timeout", dc, "global_timeout", dcSubject, &Walker::integer);
        copy(facts, "enable_ssh_backdoor", dc, "enable_ssh_backdoor", dcSubject, &Walker::boolean);
        if (auto script = find(dc, "test_script", dcSubject)) {
            std::optional<std::string> drv;
            facts["test_script"] = storePath(*script, evaluating("test_script", dcSubject), drv);
        }
        return facts;
    }

    /** runTest before 26.05 (`nodes.<n>` is a NixOS configuration) and legacy tests (`nodes.<n>.config`). */
    json nodesFacts(Value & nodes, bool legacy, const std::string & subject)
    {
        json facts = {{"vms", json::object()}};
        state.forceAttrs(nodes, pos, evaluating("nodes", subject));
        for (auto & n : nodes.attrs()->lexicographicOrder(state.symbols)) {
            std::string name(state.symbols[n->name]);
            auto nodeSubject = "node `" + name + "` of " + subject;
            withTrace("while evaluating " + nodeSubject, [&] {
                Value & node = legacy ? need(*n->value, "config", nodeSubject) : *n->value;
                facts["vms"][name] = vmFromNode(node, name, nodeSubject);
            });
        }
        return facts;
    }

    /** The facts of one test, in the shape `plan_from_facts` reads. */
    json facts(Value & t, Shape shape, const std::string & subject)
    {
        json facts;
        withTrace("while making the plan of " + subject, [&] { facts = factsOf(t, shape, subject); });
        return facts;
    }

    json factsOf(Value & t, Shape shape, const std::string & subject)
    {
        json facts;
        if (shape == Shape::Legacy) {
            facts = nodesFacts(need(t, "nodes", subject), true, subject);
            copy(facts, "name", t, "driver.testName", subject, &Walker::string);
            copy(facts, "test_script_text", t, "driver.testScript", subject, &Walker::string);
        } else {
            Value & config = need(t, "config", subject);
            if (shape == Shape::DriverConfiguration)
                facts = driverConfigurationFacts(config, subject);
            else {
                facts = nodesFacts(need(config, "nodes", subject), false, subject);
                configFacts(facts, config, subject);
            }
        }
        scriptInputs(facts);
        if (state.isDerivation(t)) {
            copy(facts, "system", t, "system", subject, &Walker::string);
            // `drvPath` carries the deep context of the whole test run: kept out of the result's context.
            if (auto drvPath = find(t, "drvPath", subject))
                facts["test_drv"] = std::string(state.forceString(*drvPath, pos, evaluating("drvPath", subject)));
        }
        return facts;
    }

    /**
     * `test_script_inputs`: the derivation outputs named by the string context of the script that will run (its
     * text, else its file), which `nix eval --json` drops. Opaque paths and whole-closure (`drvPath`) references are
     * in the store once evaluated, so only built outputs are listed.
     */
    void scriptInputs(json & facts)
    {
        auto field = facts.contains("test_script_text") ? "test_script_text" : "test_script";
        if (!facts.contains(field))
            return;
        auto found = contexts.find(facts[field].get<std::string>());
        if (found == contexts.end())
            return;
        std::set<std::string> inputs;
        for (auto & elem : found->second)
            if (auto built = std::get_if<NixStringContextElem::Built>(&elem.raw))
                inputs.insert(state.store->printStorePath(built->drvPath->getBaseStorePath()) + "^" + built->output);
        if (!inputs.empty())
            facts["test_script_inputs"] = inputs;
    }

    /** Runs `f`, adding `trace` to an error thrown from it. */
    template<typename F>
    void withTrace(const std::string & trace, F f)
    {
        try {
            f();
        } catch (Error & e) {
            e.addTrace(state.positions[pos], HintFmt(trace));
            throw;
        }
    }

    /** Rust's answer (a JSON document) as a Nix value, with the string context of what was read put back. */
    void toValue(const std::string & text, Value & v)
    {
        parseJSON(state, text, v);
        restoreContext(v);
    }

    void restoreContext(Value & v)
    {
        if (v.type() == nAttrs)
            for (auto & a : *v.attrs())
                restoreContext(*a.value);
        else if (v.type() == nList)
            for (auto elem : compat::items(v))
                restoreContext(*elem);
        else if (v.type() == nString) {
            auto found = contexts.find(std::string(v.string_view()));
            if (found != contexts.end())
                compat::setString(v, state, found->first, found->second);
        }
    }
};

/** JSON text for Rust, which takes only UTF-8: a Nix string that is not UTF-8 gets replacement characters. */
static std::string dump(const json & j)
{
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

static void prim_nixosTestPlan(EvalState & state, PosIdx pos, Value * const * args, Value & v)
{
    Walker walker{state, pos, {}};
    Value & arg = *args[0];
    auto shape = walker.shape(arg);
    std::string result;
    try {
        if (shape != Shape::NotATest) {
            auto subject = walker.label(arg, shape, "the test passed to builtins.nixosTestPlan");
            result = std::string(plan_from_facts_json(dump(walker.facts(arg, shape, subject))));
        } else if (arg.type() == nAttrs && !state.isDerivation(arg)) {
            json set = {{"tests", json::object()}, {"skipped", json::object()}};
            for (auto & a : arg.attrs()->lexicographicOrder(state.symbols)) {
                std::string name(state.symbols[a->name]);
                walker.withTrace("while evaluating the attribute `" + name + "` of the tests", [&] {
                    auto memberShape = walker.shape(*a->value);
                    if (memberShape == Shape::NotATest)
                        set["skipped"][name] = walker.whyNotATest(*a->value);
                    else
                        set["tests"][name] = walker.facts(*a->value, memberShape, "test `" + name + "`");
                });
            }
            result = std::string(plans_from_facts_set_json(dump(set)));
        } else {
            state
                .error<TypeError>(
                    "builtins.nixosTestPlan expects a NixOS test (what runNixOSTest or nixosTest returns) or an "
                    "attribute set of them (such as a flake's checks.<system>), but found %s",
                    walker.whyNotATest(arg))
                .atPos(pos)
                .debugThrow();
        }
    } catch (rust::Error & e) {
        state.error<EvalError>("cannot make a test plan: %s", e.what()).atPos(pos).debugThrow();
    }
    walker.toValue(result, v);
}

} // namespace testrig

// Nix calls this after loading the plugin (Nix 2.21 and later). The version check comes first: a plugin built for
// another Nix may have loaded (its symbols resolved) and still disagree on the layout of what it touches, so on a
// mismatch it says so on stderr, without touching any Nix data structure, and registers nothing.
// TESTRIG_BUILT_FOR_NIX (nix-compat.hh) is the Nix version this plugin was built for; smoke.sh builds one that
// claims another, to see the mismatch message.

namespace testrig {
/**
 * Whether the running Nix is the one the plugin was built for: the same version, where a development build's
 * suffix (`2.31.0pre20250701_abcdef`, which its pkg-config version lacks) does not count.
 */
static bool sameNix(std::string_view running, std::string_view built)
{
    if (!running.starts_with(built))
        return false;
    auto rest = running.substr(built.size());
    return rest.empty() || !(std::isdigit(static_cast<unsigned char>(rest[0])) || rest[0] == '.');
}
} // namespace testrig

extern "C" void nix_plugin_entry()
{
    if (!testrig::sameNix(nix::nixVersion, TESTRIG_BUILT_FOR_NIX)) {
        std::fprintf(
            stderr,
            "testrig: this plugin was built for Nix %s but was loaded into Nix %s; builtins.nixosTestPlan is not "
            "available (rebuild the plugin against this Nix: plugin/build.sh)\n",
            TESTRIG_BUILT_FOR_NIX,
            nix::nixVersion.c_str());
        return;
    }
    nix::RegisterPrimOp(testrig::compat::makePrimOp(
        "__nixosTestPlan",
        {"test"},
        R"(
          Returns the testrig plan (schema `testrig-plan/1`) of a NixOS test, as returned by
          `pkgs.testers.runNixOSTest` or `pkgs.nixosTest`, without building anything. Given an attribute set of
          tests, such as a flake's `checks.<system>`, returns `{ plans = { <name> = plan; }; skipped = { <name> =
          reason; }; }`, where `skipped` lists the attributes that are not NixOS tests.
        )",
        testrig::prim_nixosTestPlan));
}
