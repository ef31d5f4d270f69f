// Compile-time checks of nix-compat.hh's detections (plugin/smoke.sh compiles this with -fsyntax-only against the
// installed Nix, tests/suite.d/plugin-newer-nix with clang against the headers of Nix 2.35.2 and master). Against
// the installed Nix (2.26) the real types take the old branches; the newer branches, which no Nix here can run, are
// also instantiated with types shaped like the upstream declarations they detect:
//   Value::listView() and mkString(s, context, EvalMemory &)   (Nix 2.30 and 2.33, value.hh)
//   PrimOp { name; args; arity; doc; addTrace; impl; ... }      (Nix 2.34, eval.hh)
//   a primop called with `CallSite { PosIdx pos; }`             (master, eval.hh)
// Only their shape matters: nothing here runs.
#include "nix-compat.hh"

#include <functional>
#include <optional>
#include <type_traits>

namespace newer {

struct ListView
{
    nix::Value * const * begin() const &;
    nix::Value * const * end() const &;
};

struct EvalMemory
{};

struct State
{
    EvalMemory mem;
};

struct Value
{
    ListView listView() const;
    void mkString(std::string_view s, const nix::NixStringContext & context, EvalMemory & mem);
};

struct CallSite
{
    nix::PosIdx pos;
};

struct PrimOp
{
    std::string name;
    std::vector<std::string> args;
    size_t arity = 0;
    std::optional<std::string> doc;
    bool addTrace = true;
    std::function<void(nix::EvalState &, CallSite, nix::Value * const *, nix::Value &)> impl;
    bool internal = false;
};

} // namespace newer

using namespace testrig::compat;

// Lists: the installed Nix's listItems(), a newer Nix's listView().
static_assert(std::is_same_v<decltype(items(std::declval<const newer::Value &>())), newer::ListView>);
static_assert(!std::is_same_v<decltype(items(std::declval<const nix::Value &>())), newer::ListView>);

// Strings with context: with the evaluator's memory where mkString takes it (explicit instantiations compile the
// bodies). Qualified: an explicit instantiation outside its template's namespace must name that namespace (clang
// holds to this, GCC 12 also accepts the name found through `using namespace`).
template void
testrig::compat::setString(newer::Value &, newer::State &, std::string_view, const nix::NixStringContext &);
template void
testrig::compat::setString(nix::Value &, nix::EvalState &, std::string_view, const nix::NixStringContext &);

// Call positions: a PosIdx as it is, a CallSite's `pos`.
static_assert(std::is_same_v<decltype(positionOf(nix::PosIdx())), nix::PosIdx>);
static_assert(std::is_same_v<decltype(positionOf(newer::CallSite{})), nix::PosIdx>);

static void impl(nix::EvalState &, nix::PosIdx, nix::Value * const *, nix::Value &) {}

// Primops: `fun` with PosIdx in the installed Nix, `impl` with CallSite in a newer one. Instantiating the function
// bodies (not just their declarations) is what checks the designated initializers and the lambda's fit.
[[maybe_unused]] static nix::PrimOp installed = makePrimOp<nix::PrimOp>("__x", {"a"}, "doc", impl);
[[maybe_unused]] static newer::PrimOp newest = makePrimOp<newer::PrimOp>("__x", {"a"}, "doc", impl);
static_assert(std::is_same_v<decltype(makePrimOp<newer::PrimOp>("", {}, "", impl)), newer::PrimOp>);
