"""Which weights, initialization and input statistics a backbone is built with, in every command.

Distillation records its choice in the artifact (the weights file by absolute
path and sha256); every later command that builds a backbone for that artifact
(eval, baselines, crossmodel, pca, neighbors) starts from that record, and the
same three flags override it: ``--weights``, ``--random-init``,
``--normalization``. This module imports neither torch nor timm, so that the
command line parses (and answers ``--help``) at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lgm.digests import weights_sha256
from lgm.errors import LgmError, MissingResourceError, UsageError

def named_path(entry: str, names) -> tuple[str | None, str]:
    """``NAME=PATH`` with NAME one of ``names`` -> (NAME, PATH); anything else (a bare path, even one holding '='
    or one that exists as written) -> (None, entry)."""
    name, sep, path = entry.partition("=")
    if sep and name in names and not Path(entry).exists():
        return name, path
    return None, entry


def weights_record(path: str | Path) -> dict[str, str]:
    """What an artifact stores about a weights file: where it was and what it held."""
    p = Path(path)
    if not p.exists():
        raise MissingResourceError(f"weights not found at {p} (no such file)")
    return {"path": str(p.resolve()), "sha256": weights_sha256(p)}


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone as it is to be built: name, weights file (None: its default), random init, normalization."""

    name: str
    weights: str | None = None
    random_init: bool = False
    normalization: str = "native"

    def load(self, device: Any = "cpu", **kwargs: Any):
        from lgm.backbones import load_backbone

        return load_backbone(self.name, device, random_init=self.random_init, weights=self.weights,
                             normalization=self.normalization, **kwargs)


def recorded_specs(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The backbone(s) an artifact (distilled set or baseline selection) records, by name.

    Each value holds ``random_init``, ``normalization`` and, where a file was
    used, ``weights_file`` ({path, sha256}) or at least ``weights_path`` (runs
    made before the sha256 was recorded).
    """
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    out: dict[str, dict[str, Any]] = {}
    if isinstance(meta.get("backbones"), list):  # a joint set: one entry per backbone (lgm.joint.JointSummary)
        for e in meta["backbones"]:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                rec = {"random_init": bool(e.get("random_init", False)),
                       "normalization": e.get("normalization", config.get("normalization", "native"))}
                if isinstance(e.get("weights_file"), dict):
                    rec["weights_file"] = e["weights_file"]
                out[e["name"]] = rec
        return out
    name = meta.get("backbone")
    if isinstance(name, str) and name:
        rec = {"random_init": bool(meta.get("random_init", config.get("random_init", False))),
               "normalization": config.get("normalization", meta.get("normalization", "native"))}
        if isinstance(meta.get("weights_file"), dict):
            rec["weights_file"] = meta["weights_file"]
        elif config.get("weights"):
            rec["weights_path"] = config["weights"]
        out[name] = rec
    return out


@dataclass(frozen=True, kw_only=True)
class BackboneFlags:
    """The options of every command that builds a backbone; mixed into its config."""

    weights: tuple[str, ...] = ()
    """Local weights: PATH for the backbone (the artifact's own when several are in play), or NAME=PATH per
    backbone (repeatable). Default: the file the artifact recorded (checked by sha256), else the installed or
    cached weights."""
    random_init: bool = False
    """Randomly initialized backbones (tests and speed checks only; marked in every result)."""
    normalization: Literal["auto", "native", "imagenet"] = "auto"
    """Backbone input statistics: auto (what the artifact recorded, else native), native, or imagenet."""

    def weights_by_name(self, names: tuple[str, ...] | list[str], own: str | None = None) -> dict[str, str]:
        """``--weights`` entries assigned to backbone names (a bare PATH goes to ``own``, or to the only name)."""
        out: dict[str, str] = {}
        names = list(names)
        for entry in self.weights:
            target, path = named_path(entry, names)
            if target is None:
                candidates = [own] if own in names else names
                if len(candidates) != 1:
                    raise UsageError(f"--weights {entry}: {len(names)} backbones are in play ({', '.join(names)}); "
                                     "say which one it is for with --weights NAME=PATH")
                target = candidates[0]
            if target in out:
                raise UsageError(f"--weights gives two files for {target}: {out[target]} and {path}")
            out[target] = path
        return out

    def spec_for(self, name: str, recorded: dict[str, dict[str, Any]] | None = None,
                 names: tuple[str, ...] | list[str] | None = None, own: str | None = None,
                 where: str = "the artifact") -> BackboneSpec:
        """How to build ``name``: the flags first, then what ``recorded`` (an artifact's record) says."""
        names = list(names) if names is not None else [name]
        given = self.weights_by_name(names, own).get(name)
        rec = (recorded or {}).get(name, {})
        norm = self.normalization if self.normalization != "auto" else rec.get("normalization", "native")
        if given is not None:
            if self.random_init:
                raise UsageError(f"--weights {given} and --random-init both given for {name}; choose one")
            if not Path(given).exists():
                raise MissingResourceError(f"{name} weights not found at {given} (no such file)")
            return BackboneSpec(name, given, False, norm)
        if self.random_init or rec.get("random_init"):
            return BackboneSpec(name, None, True, norm)
        if "weights_file" in rec:
            return BackboneSpec(name, checked_recorded_file(name, rec["weights_file"], where), False, norm)
        if rec.get("weights_path"):
            path = rec["weights_path"]
            if not Path(path).exists():
                raise MissingResourceError(
                    f"{where} was made with {name} weights from {path}, which is not there (from {os.getcwd()}); "
                    f"give the file with --weights {name}=PATH")
            return BackboneSpec(name, path, False, norm)
        return BackboneSpec(name, None, False, norm)


def checked_recorded_file(name: str, record: dict[str, Any], where: str) -> str:
    """The recorded weights file, after checking it is still there and unchanged."""
    path, expected = str(record.get("path", "")), str(record.get("sha256", ""))
    how = (f"give the file that has sha256 {expected} with --weights {name}=PATH "
           f"(or --weights PATH when {name} is the only backbone)")
    if not path or not Path(path).exists():
        raise MissingResourceError(f"{where} was made with {name} weights from {path or '(no path)'}, which is not "
                                   f"there any more; {how}")
    actual = weights_sha256(path)
    if expected and actual != expected:
        raise LgmError(f"{where} was made with {name} weights from {path} (sha256 {expected}), but that file has "
                       f"changed (sha256 {actual}); {how}")
    return path
