// The parts of Nix's C++ API that changed between the Nix versions the plugin builds against, in one place, so
// that testrig-plugin.cc reads as code for one Nix.
//
// Where a change's first release is certain, the header layout, it is told apart by what exists; elsewhere by
// C++20 requires-expressions on the API itself, because the release that first carried some changes is not
// certain (see the table in README.md, "Nix versions"). Each detection is a template, so that the branch not taken
// is never instantiated.
//
// Built and tested against Nix 2.26.3 only; the other branches follow the upstream headers of 2.28 to 2.35 and
// master, compiled with stand-in types of their shapes (compat-check.cc) and against the public headers of 2.35.2
// and master (tests/suite.d/plugin-newer-nix): no newer Nix can be built on the development machines.
#pragma once

#if __has_include(<nix/expr/eval.hh>)
// Nix 2.28 and later: headers under nix/<library>/; nix/expr/config.hh (included by eval.hh) carries the macros
// that change the ABI (NIX_USE_BOEHMGC), and no header carries the version, which the build passes instead.
#    define TESTRIG_NIX_HEADER_LAYOUT 2
#    include <nix/expr/eval-inline.hh>
#    include <nix/expr/json-to-value.hh>
#    include <nix/expr/primops.hh>
#    include <nix/store/globals.hh>
#    include <nix/store/store-api.hh>
#    include <nix/util/strings.hh>
#else
// Nix 2.26 and 2.27: a flat include directory. The generated configuration headers come first: pkg-config does not
// add them, and HAVE_BOEHMGC changes the ABI.
#    define TESTRIG_NIX_HEADER_LAYOUT 1
#    include "config-util.hh"
#    include "config-store.hh"
#    include "config-expr.hh"

#    include "eval-inline.hh"
#    include "globals.hh"
#    include "json-to-value.hh"
#    include "primops.hh"
#    include "store-api.hh"
#endif

// The Nix version the plugin is built for, compared with the running Nix's when it is loaded: plugin/build.sh and
// nix/plugin.nix pass `pkg-config --modversion nix-expr`. Only the old layout has it in a header.
#ifndef TESTRIG_BUILT_FOR_NIX
#    if TESTRIG_NIX_HEADER_LAYOUT == 1
#        define TESTRIG_BUILT_FOR_NIX PACKAGE_VERSION
#    else
#        error \
            "build with -DTESTRIG_BUILT_FOR_NIX='\"<version>\"' (pkg-config --modversion nix-expr), as plugin/build.sh does"
#    endif
#endif

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace testrig::compat {

/** The elements of a list value: `listItems()` until Nix 2.29, `listView()` from 2.30. */
template<typename V>
auto items(const V & v)
{
    if constexpr (requires { v.listView(); })
        return v.listView();
    else
        return v.listItems();
}

/** `v` set to a string with context: since Nix 2.33 the string is allocated in the evaluator's memory. */
template<typename V, typename State>
void setString(V & v, State & state, std::string_view s, const nix::NixStringContext & context)
{
    if constexpr (requires { v.mkString(s, context, state.mem); })
        v.mkString(s, context, state.mem);
    else
        v.mkString(s, context);
}

/** The position of a primop call: a `PosIdx` until Nix 2.35, a `CallSite` holding one after. */
inline nix::PosIdx positionOf(nix::PosIdx pos)
{
    return pos;
}

template<typename Site>
requires requires(const Site & site)
{
    site.pos;
}
nix::PosIdx positionOf(const Site & site)
{
    return site.pos;
}

/** How a primop is implemented here, whatever the Nix version passes. */
using PrimOpImpl = void (*)(nix::EvalState & state, nix::PosIdx pos, nix::Value * const * args, nix::Value & v);

/**
 * A primop for `nix::RegisterPrimOp`: its implementation is the field `fun` until Nix 2.33, `impl` from 2.34.0;
 * the generic lambda fits both the old signature and master's (`CallSite` instead of `PosIdx`).
 */
template<typename PrimOp = nix::PrimOp>
PrimOp makePrimOp(std::string name, std::vector<std::string> args, const char * doc, PrimOpImpl impl)
{
    auto call = [impl](nix::EvalState & state, auto site, nix::Value * const * args, nix::Value & v) {
        impl(state, positionOf(site), args, v);
    };
    if constexpr (requires(PrimOp p) { p.impl; })
        return PrimOp{.name = std::move(name), .args = std::move(args), .doc = doc, .impl = call};
    else
        return PrimOp{.name = std::move(name), .args = std::move(args), .doc = doc, .fun = call};
}

} // namespace testrig::compat
