#!/usr/bin/env python3
"""ztunnel's code layout: which functions go first in its binary, and in what order.

ztunnel's resident memory is mostly its own code. The kernel maps a page fault's whole 64 KiB
neighbourhood of a binary ("fault-around"), so a function that runs costs the 64 KiB around
it, and functions that run are spread over the whole 10 MB of text. Placing the functions that
run at all (at start-up and on the data path) together at the front of the text leaves the rest
untouched, and unmapped.

Three commands:

- `train OUT DIR...` writes the order file from callgrind profiles of ztunnel, one folder of
  `cg.*` files per workload (`scripts/train-link-order.sh` makes them): every function of the
  ztunnel binary that ran, those that ran in every workload first, then each workload's own,
  each group the most instructions first.
- `check BINARY ORDER` fails unless the binary was laid out by the order: most of the order
  file's Rust functions are in it under their exact names, and they sit together at the start
  of its code (the test command runs it on the release ztunnel and on the image's).
- `resolve ORDER OUT OBJECT...` is the link step's half (`scripts/rustc-linker.sh`): it finds the
  order file's functions among the symbols of the objects being linked and writes lld's
  `--symbol-ordering-file` with their exact names.

The order file holds the exact symbol names of the profiled build. A rebuild keeps most of
them, but not all: cargo's feature unification (which packages one `cargo build` names) and
toolchain or dependency updates change the hash of a legacy Rust symbol (`17h<16 hex>E`), the
crate disambiguator of a v0 one (`Cs<base 62>_`), and the numeric suffixes LLVM gives local
copies (`.1234`). A name not found as it is is matched without those parts; when that matches
several symbols (instances of one generic function) all of them are ordered.
"""

import collections
import glob
import os
import re
import subprocess
import sys

LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E")
V0_CRATE = re.compile(r"Cs[0-9A-Za-z]*_")
LOCAL_SUFFIX = re.compile(r"(\.(llvm\.)?[0-9]+)+$")
# callgrind tells apart functions of one name with a `'N` suffix.
CALLGRIND_COPY = re.compile(r"'[0-9]+$")


def normalise(symbol):
    symbol = CALLGRIND_COPY.sub("", symbol)
    symbol = LOCAL_SUFFIX.sub("", symbol)
    if symbol.startswith("_ZN"):
        symbol = LEGACY_HASH.sub("E", symbol)
    elif symbol.startswith("_R"):
        symbol = V0_CRATE.sub("C", symbol)
    return symbol


def exact(symbol):
    """A symbol's name as the order file keeps it: without callgrind's and LLVM's copy suffixes."""
    return LOCAL_SUFFIX.sub("", CALLGRIND_COPY.sub("", symbol))


def callgrind_costs(path, binary_suffix, costs):
    """Adds each function's own instruction count (the `fn=` blocks' first event) from one
    callgrind output file, for functions of the object whose path ends in `binary_suffix`."""
    in_binary = False
    function = None
    skip_next = False
    with open(path, errors="replace") as f:
        for line in f:
            if skip_next:
                # The line after `calls=` is the call's inclusive cost: not this function's own.
                skip_next = False
                continue
            if line.startswith("ob="):
                in_binary = line[3:].strip().endswith(binary_suffix)
            elif line.startswith("fn="):
                function = line[3:].strip() if in_binary else None
                if function:
                    costs[function] += 0
            elif line.startswith("calls="):
                skip_next = True
            elif function and line[:1].isdigit():
                fields = line.split()
                if len(fields) >= 2:
                    costs[function] += int(fields[1])


def train(out, profiles, binary_suffix):
    """Writes the order from `profiles`, one list of callgrind files per workload profiled.
    Functions that ran in every workload go first, then the others by the first workload that
    ran them, each group the most instructions first: every workload's code stays together at the
    front, apart from one gap at most, however their hot functions interleave by cost."""
    total = collections.Counter()
    ran_in = collections.defaultdict(set)
    for i, files in enumerate(profiles):
        costs = collections.Counter()
        for path in files:
            callgrind_costs(path, binary_suffix, costs)
        for symbol, cost in costs.items():
            # callgrind's `'N` copies and LLVM's numbered local copies are one function here.
            name = exact(symbol)
            # Code callgrind found no symbol for is named by its address, which no link knows.
            if name.startswith("0x"):
                continue
            total[name] += cost
            ran_in[name].add(i)
    if not total:
        sys.exit(f"link_order: no function of {binary_suffix} in the callgrind files")

    def group(name):
        workloads = ran_in[name]
        return 0 if len(workloads) == len(profiles) else 1 + min(workloads)

    names = sorted(total, key=lambda n: (group(n), -total[n], n))
    with open(out, "w") as f:
        f.write(
            "# ztunnel's hot-code order: the functions that ran in profiles of ztunnel, by symbol\n"
            "# name; those of every workload first, then each workload's own, the most\n"
            "# instructions first in each group. Written by\n"
            "# scripts/train-link-order.sh; read by scripts/rustc-linker.sh when ztunnel is linked.\n"
        )
        for name in names:
            f.write(name + "\n")
    sizes = collections.Counter(group(n) for n in names)
    groups = ", ".join(
        f"{sizes[g]} {'ran in every workload' if g == 0 else f'first ran in workload {g}'}"
        for g in sorted(sizes)
    )
    print(f"link_order: {len(names)} functions written to {out} ({groups})", file=sys.stderr)


def function_symbols(paths):
    """The defined function symbols of the files, as (name, address, size), with two indexes of
    them: by exact name (`exact`) and by normalised name."""
    listing = subprocess.run(
        ["nm", "--defined-only", "--print-size", "--format=posix", *paths],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    by_exact = collections.defaultdict(list)
    by_name = collections.defaultdict(list)
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[1] not in "tTwW":
            continue
        # An object's undefined-size symbols have no size column.
        size = int(fields[3], 16) if len(fields) >= 4 else 0
        symbol = (fields[0], int(fields[2], 16), size)
        by_exact[exact(fields[0])].append(symbol)
        by_name[normalise(fields[0])].append(symbol)
    return by_exact, by_name


def lookup(name, by_exact, by_name):
    """The symbols an order-file name stands for: its exact match, else every symbol of its
    normalised name (instances of one generic function)."""
    return by_exact.get(name) or by_name.get(normalise(name)) or []


def order_names(order):
    with open(order) as f:
        return [l.strip() for l in f if l.strip() and not l.startswith("#")]


def resolve(order, out, objects):
    by_exact, by_name = function_symbols(objects)
    names = order_names(order)
    written = set()
    found = 0
    with open(out, "w") as o:
        for name in names:
            # A name not among the Rust objects' symbols may be a C function (aws-lc) in a
            # static library that is linked by name: lld takes it as it is, and skips a name
            # it does not find (--no-warn-symbol-ordering).
            symbols = [s[0] for s in lookup(name, by_exact, by_name)]
            if symbols:
                found += 1
            for symbol in symbols or [name]:
                if symbol not in written:
                    written.add(symbol)
                    o.write(symbol + "\n")
    return found, len(names)


def check(binary, order):
    """Exits non-zero unless `binary`'s code follows `order` (see the module's doc)."""
    by_exact, by_name = function_symbols([binary])
    sized = [s for symbols in by_exact.values() for s in symbols if s[2]]
    if not sized:
        sys.exit(f"link_order: {binary} has no function symbols")
    text_start = min(s[1] for s in sized)
    rust = [n for n in order_names(order) if n.startswith(("_ZN", "_R"))]
    found = [symbols for symbols in (lookup(n, by_exact, by_name) for n in rust) if symbols]
    exactly = sum(1 for n in rust if n in by_exact)
    placed = {sym for symbols in found for sym in symbols if sym[2]}
    total = sum(size for _, _, size in placed)
    # Laid out by the order, the ordered functions fill the start of the code; slack for the
    # C functions of the order (aws-lc) placed among them and for alignment padding.
    front = text_start + total * 5 // 4
    in_front = sum(size for _, address, size in placed if address < front)
    print(
        f"link_order: {len(found)} of {len(rust)} Rust functions of {order} are in {binary}, "
        f"{exactly} by their exact names; {in_front * 100 // max(total, 1)} % of their "
        f"{total // 1024} KiB of code is at the start",
        file=sys.stderr,
    )
    # Names found only without their hashes order every instance of a generic function: more
    # code up front and, measured on the image's ztunnel with a fifth found exactly, most of
    # the memory the layout saves lost again. An order trained on another build (other
    # packages built together, so other features; another toolchain or Cargo.lock) does that.
    if exactly * 10 < len(rust) * 8:
        sys.exit(
            "link_order: the order does not fit this build (fewer than 80 % of its names are "
            "exact): rerun scripts/train-link-order.sh (--image for the images' ztunnel)"
        )
    if in_front * 10 < total * 9:
        sys.exit("link_order: the binary was not linked by the order (see <target>/<profile>/deps/ztunnel-*.symbol-order.log)")


def main(argv):
    if len(argv) >= 4 and argv[1] == "train":
        profiles = [sorted(glob.glob(os.path.join(d, "cg.*"))) for d in argv[3:]]
        for d, files in zip(argv[3:], profiles):
            if not files:
                sys.exit(f"link_order: no callgrind file (cg.*) in {d}")
        train(argv[2], profiles, "/ztunnel")
    elif len(argv) == 4 and argv[1] == "check":
        check(argv[2], argv[3])
    elif len(argv) >= 4 and argv[1] == "resolve":
        found, total = resolve(argv[2], argv[3], argv[4:])
        print(f"link_order: {found} of {total} names found among the Rust symbols", file=sys.stderr)
    else:
        sys.exit(__doc__.split("\n\n")[0] + "\nusage: link_order.py train OUT DIR... | check BINARY ORDER | resolve ORDER OUT OBJECT...")


if __name__ == "__main__":
    main(sys.argv)
