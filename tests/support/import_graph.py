"""The import graph of the `ehrnet_jax` package, read from the source with `ast`.

Every import statement counts, also those inside functions (the lazy imports that keep JAX,
TensorFlow or onnxruntime out until needed): a lazy import still makes the importing module
depend on the imported one. An edge goes to the module an import names (`from a.b import c`:
`a.b.c` if that is a module, else `a.b`); the `__init__` of the packages above it, which Python
runs first, is not counted, so that a package may re-export its own modules.
"""

import ast
import pathlib

PACKAGE = "ehrnet_jax"
ROOT = pathlib.Path(__file__).resolve().parents[2] / PACKAGE


def module_names() -> dict[str, pathlib.Path]:
  """Dotted name -> file of every module of the package (a package is its `__init__`)."""
  names = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return names


def _imported(node: ast.AST, modules) -> list[str]:
  """The names imported by one statement: project modules, and third-party top-level names."""
  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
    names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
             else node.module for alias in node.names]
  else:
    return []
  found = []
  for name in names:
    if name.split(".")[0] != PACKAGE:
      found.append(name.split(".")[0])
      continue
    while name not in modules:   # `import a.b.c` where c is a name in a.b, or a subpackage path
      name = name.rsplit(".", 1)[0]
    found.append(name)
  return found


def imports() -> dict[str, set[str]]:
  """Module -> everything it imports (project modules by dotted name, others by top name)."""
  modules = module_names()
  return {name: {imported for node in ast.walk(ast.parse(path.read_text()))
                 for imported in _imported(node, modules) if imported != name}
          for name, path in modules.items()}


def project_graph() -> dict[str, set[str]]:
  graph = imports()
  return {name: {m for m in targets if m in graph} for name, targets in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), sorted."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for target in sorted(graph[node]):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      component = []
      while not component or component[-1] != node:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return sorted(found)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  """Every project module `start` imports, directly or through others."""
  seen, todo = set(), [start]
  while todo:
    for target in graph[todo.pop()] - seen:
      seen.add(target)
      todo.append(target)
  return seen
