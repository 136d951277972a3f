"""Layout figures of the hf_mim package: file sizes, longest functions, in-function imports of hf_mim, import cycles."""

import ast
import collections
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "hf_mim")
pkg = root.name
mods = {}
for p in sorted(root.rglob("*.py")):
    rel = p.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    mods[".".join(parts)] = p


def resolve(modname, node, is_pkg):
    if node.level == 0:
        return node.module
    base = modname.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


edges = collections.defaultdict(set)
inner = []
funcs = []
sizes = []
for name, p in mods.items():
    src = p.read_text()
    tree = ast.parse(src)
    is_pkg = p.name == "__init__.py"
    sizes.append((len(src.splitlines()), name))
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            funcs.append((fn.end_lineno - fn.lineno + 1, f"{name}.{fn.name}"))
    top = set(id(n) for n in tree.body)

    def targets(node, name=name, is_pkg=is_pkg):
        if isinstance(node, ast.ImportFrom):
            m = resolve(name, node, is_pkg)
            out = []
            for a in node.names:
                full = f"{m}.{a.name}"
                out.append(full if full in mods else m)
            return out
        return [a.name for a in node.names]

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            ts = [t for t in targets(node) if t and (t == pkg or t.startswith(pkg + "."))]
            if not ts:
                continue
            toplevel = id(node) in top or any(
                id(node) in set(id(x) for x in ast.walk(b)) for b in tree.body if isinstance(b, (ast.If, ast.Try))
            )
            for t in ts:
                if toplevel:
                    edges[name].add(t)
                else:
                    inner.append((name, t, node.lineno))


# cycles among top-level imports, between modules (package __init__ edges excluded as re-exports)
def sccs(graph):
    index = {}
    low = {}
    st = []
    on = set()
    out = []
    i = [0]

    def visit(v):
        index[v] = low[v] = i[0]
        i[0] += 1
        st.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = st.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


allg = {k: set(v) for k, v in edges.items()}
for a, b, _ in inner:
    allg.setdefault(a, set()).add(b)


def leaf(g):
    return {
        k: {t for t in v if not (mods.get(t) and mods[t].name == "__init__.py")}
        for k, v in g.items()
        if not mods[k].name == "__init__.py"
    }


up = sorted({a for a, vs in allg.items() for b in vs if b == pkg and a != pkg})
print(f"modules: {len(mods)}, lines: {sum(s for s, _ in sizes)}")
print("largest files:", ", ".join(f"{n} {s}" for s, n in sorted(sizes, reverse=True)[:6]))
print("longest functions:", ", ".join(f"{n} {s}" for s, n in sorted(funcs, reverse=True)[:6]))
print(f"in-function imports of {pkg} (statements): {len(set((a, line) for a, _, line in inner))}")
by = collections.Counter(a for a, _, _ in inner)
print("  by module:", ", ".join(f"{k} {v}" for k, v in by.most_common(8)))
print("import cycles (top-level + in-function, package __init__ excluded):", sccs(leaf(allg)) or "none")
print("modules importing the package itself:", up or "none")
if "-v" in sys.argv:
    for a, b, line in inner:
        print(f"  {mods[a]}:{line} -> {b}")
