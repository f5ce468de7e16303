"""Actions and their keys.

An action is one target fully resolved: the recipe text after expansion, the
digest of every input, the parameters, the declared environment. Its key is
the blake3 of a canonical JSON encoding. Nothing that cannot change a result
(mtimes, the checkout's absolute path, the user, the host) goes in.
"""
from __future__ import annotations

from dataclasses import dataclass

from buildsys.digest import compact_json, hash_bytes

SCHEMA = "bb-action-3"


@dataclass(frozen=True)
class Action:
    """One target fully resolved; its key is the digest of its canonical form."""

    target: str
    recipe: str
    inputs: tuple[tuple[str, str, bool], ...]  # (path, digest, executable), sorted; a directory's digest is its tree's
    outputs: tuple[str, ...]
    params: tuple[tuple[str, str], ...]
    env: tuple[tuple[str, str | None], ...]  # declared variables and their values
    environment: tuple[tuple[str, str], ...]  # image, requirements digest, shell
    schema: str = SCHEMA
    variables: tuple[tuple[str, str], ...] = ()  # explanation only, not in the key

    def canonical(self) -> bytes:
        return _canonical(self.schema, self.recipe, self.inputs, self.outputs, self.params, self.env, self.environment)

    def key(self) -> str:
        # Asked several times per target (plan, run, record): computed once.
        # The dataclass is frozen, so its fields cannot change under the memo.
        key = self.__dict__.get("_key")
        if key is None:
            key = self.__dict__["_key"] = hash_bytes(self.canonical())
        return key

    def to_json(self) -> dict:
        # written out: dataclasses.asdict is slow enough to show on no-op builds
        return {
            "target": self.target,
            "recipe": self.recipe,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "params": self.params,
            "env": self.env,
            "environment": self.environment,
            "schema": self.schema,
            "variables": self.variables,
        }

    def to_bytes(self) -> bytes:
        return compact_json(self.to_json()).encode()

    @classmethod
    def from_json(cls, data: dict) -> "Action":
        return cls(
            target=data["target"],
            recipe=data["recipe"],
            inputs=tuple(tuple(x) for x in data["inputs"]),
            outputs=tuple(data["outputs"]),
            params=tuple(tuple(x) for x in data["params"]),
            env=tuple(tuple(x) for x in data["env"]),
            environment=tuple(tuple(x) for x in data["environment"]),
            schema=data.get("schema", ""),
            variables=tuple(tuple(x) for x in data.get("variables", ())),
        )


def _canonical(schema, recipe, inputs, outputs, params, env, environment) -> bytes:
    # A JSON list in a fixed field order. The target's name is not part of
    # the key: two rules doing the same work on the same inputs into the
    # same paths share a result.
    return compact_json([schema, recipe, inputs, outputs, params, env, environment]).encode()


def verified_inputs(data, key: str) -> dict[str, tuple[str, bool, bool]] | None:
    """The inputs of an action as stored (its to_json), path (no trailing
    slash) -> (digest, executable, folder), if the action is the one `key`
    names (its canonical encoding hashes to it); else None. Read straight
    from the JSON: a join's action has thousands of inputs."""
    try:
        body = _canonical(*(data[f] for f in ("schema", "recipe", "inputs", "outputs", "params", "env", "environment")))
        if hash_bytes(body) != key:
            return None
        return {path.rstrip("/"): (digest, executable, path.endswith("/")) for path, digest, executable in data["inputs"]}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def diff(old: Action, new: Action) -> list[str]:
    """What changed from `old` to `new`, one line per changed field."""
    lines: list[str] = []
    old_vars, new_vars = dict(old.variables), dict(new.variables)
    for name in new_vars:
        if name in old_vars and old_vars[name] != new_vars[name]:
            lines.append(f"variable {name} changed: {old_vars[name]!r} -> {new_vars[name]!r}")
    if old.schema != new.schema:
        lines.append(f"bb's key schema changed ({old.schema} -> {new.schema})")
    old_in = {i[0]: tuple(i[1:]) for i in old.inputs}
    new_in = {i[0]: tuple(i[1:]) for i in new.inputs}
    for path in sorted(new_in.keys() - old_in.keys()):
        lines.append(f"input added: {path}")
    for path in sorted(old_in.keys() - new_in.keys()):
        lines.append(f"input removed: {path}")
    for path in sorted(old_in.keys() & new_in.keys()):
        (old_digest, *old_x), (new_digest, *new_x) = old_in[path], new_in[path]
        if old_digest != new_digest:
            lines.append(f"input changed: {path} ({old_digest[:12]} -> {new_digest[:12]})")
        elif old_x != new_x:
            lines.append(f"input {path}: its executable bit changed")
    if old.recipe != new.recipe:
        lines.append("recipe changed:")
        import difflib

        changed = difflib.unified_diff(old.recipe.splitlines(), new.recipe.splitlines(), lineterm="", n=0)
        lines.extend("    " + d for d in changed if not d.startswith(("---", "+++", "@@")))
    for label, a, b in (("param", old.params, new.params), ("env", old.env, new.env), ("environment", old.environment, new.environment)):
        da, db = dict(a), dict(b)
        for name in sorted(da.keys() | db.keys()):
            if da.get(name) != db.get(name):
                lines.append(f"{label} {name}: {da.get(name)!r} -> {db.get(name)!r}")
    if old.outputs != new.outputs:
        lines.append(f"outputs changed: {' '.join(old.outputs)} -> {' '.join(new.outputs)}")
    return lines
