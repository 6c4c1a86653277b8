"""An offline stand-in for `kustomize build` over deploy/kubernetes: the objects
`kubectl apply -k DIR` creates, from the kustomizations' `resources` (files or directories,
recursively) and `images` transformer, the only features our kustomizations use.

tests/deploy/test_kubernetes.py checks the manifests through it, and docs/deployment.md's
test-only `kubectl apply -k` shim renders with it (`python -m tests.deploy.kustomize DIR`,
each object validated against the Kubernetes schemas), so the page does not depend on the
kustomize bundled with whatever kubectl the machine has (Debian's kubectl 1.20 bundles
kustomize 2.0.3, which refuses directory resources). Pure functions; every call re-reads the
files.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

#: the Kubernetes version whose schemas (kubernetes-validate's bundled ones) the objects must pass
KUBERNETES_VERSION = "1.30"


class KustomizationError(Exception):
    """A kustomization this walker cannot build (a missing file, an unsupported field)."""


#: the kustomization fields this walker implements; any other is refused, not ignored
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "images"}


def documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> dict[str, Any]:
    """The Kustomization of `directory`, checked to use only what this walker implements."""
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizationError(f"{directory}: no kustomization.yaml")
    docs = documents(path)
    if len(docs) != 1 or docs[0].get("kind") != "Kustomization":
        raise KustomizationError(f"{path}: not one Kustomization")
    unsupported = set(docs[0]) - SUPPORTED_FIELDS
    if unsupported:
        raise KustomizationError(f"{path}: unsupported fields {sorted(unsupported)}")
    return docs[0]


def resources(directory: Path) -> list[Path]:
    """The entries of `directory`'s kustomization `resources` (files or directories)."""
    out = [directory / entry for entry in kustomization(directory).get("resources", [])]
    for entry in out:
        if not entry.exists():
            raise KustomizationError(f"{directory}: resource {entry.name} does not exist")
    return out


def resolved(directory: Path) -> list[Path]:
    """The manifest files a kustomization builds from, recursively."""
    out: list[Path] = []
    for entry in resources(directory):
        out.extend(resolved(entry) if entry.is_dir() else [entry])
    return out


def images(directory: Path) -> list[dict[str, str]]:
    images: list[dict[str, str]] = kustomization(directory).get("images", [])
    return images


def set_images(doc: dict[str, Any], images: list[dict[str, str]]) -> None:
    """kustomize's images transformer: a container image named `name` becomes
    `newName@digest` (or `newName:newTag`)."""
    spec = doc.get("spec") or {}
    pods = []
    if "template" in spec:
        pods.append(spec["template"]["spec"])
    if "jobTemplate" in spec:
        pods.append(spec["jobTemplate"]["spec"]["template"]["spec"])
    for pod in pods:
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for image in images:
                if container["image"] == image["name"]:
                    name = image.get("newName", image["name"])
                    if "digest" in image:
                        container["image"] = f"{name}@{image['digest']}"
                    else:
                        container["image"] = f"{name}:{image['newTag']}"


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k directory` creates (resources, and the images transformer
    of that kustomization)."""
    docs = [copy.deepcopy(doc) for path in resolved(directory) for doc in documents(path)]
    transforms = images(directory)
    for doc in docs:
        set_images(doc, transforms)
    return docs


def main(argv: list[str] | None = None) -> int:
    """Build DIR, validate every object (strict, bundled schemas), print kind/name per object."""
    import kubernetes_validate  # the command's dependency only; the walker needs none

    parser = argparse.ArgumentParser(
        prog="python -m tests.deploy.kustomize", description=main.__doc__
    )
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        objects = build(args.directory)
        for doc in objects:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except (KustomizationError, OSError, yaml.YAMLError) as error:
        print(f"kustomize: {error}", file=sys.stderr)
        return 1
    except kubernetes_validate.ValidationError as error:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        print(f"kustomize: {name}: {error.message}", file=sys.stderr)
        return 1
    for doc in objects:
        print(f"{doc['kind'].lower()}/{doc['metadata']['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
