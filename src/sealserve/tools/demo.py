"""`make demo`: the owner's flow end to end on local defaults, narrated.

Each step prints the `sealserve` command it runs (copy-paste-able) and runs it for real;
the last steps load the encrypted model straight from memory and run it. Everything lives
under `.demo/` in the current directory, which is recreated at each run.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

SEALSERVE = str(Path(sys.executable).with_name("sealserve"))


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def sealserve(*args: str, expect_failure: bool = False) -> str:
    """Run the real CLI, echoing the command as a user would type it."""
    print("$ sealserve " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run([SEALSERVE, *args], capture_output=True, text=True)
    shown = (result.stdout + result.stderr).strip()
    if shown:
        print("  " + shown.replace("\n", "\n  "), flush=True)
    if (result.returncode != 0) != expect_failure:
        raise DemoFailed(f"`sealserve {' '.join(args)}` exited with {result.returncode}")
    return result.stdout


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    plain = work / "plain" / "half_plus_two" / "1"
    key = work / "keys" / "half_plus_two.key"
    encrypted = work / "models" / "half_plus_two" / "1"
    for directory in (plain.parent, key.parent, encrypted.parent):
        directory.mkdir(parents=True)

    step("1. The model owner generates a SavedModel (TF Serving's half_plus_two)")
    sealserve("models", "make", "half_plus_two", str(plain))

    step("2. ... and a wrap key that only a verified TEE will ever receive")
    sealserve("keygen", "-w", str(key))

    step(
        "3. Every file of the model is encrypted (Gramine's protected-file format) "
        "plus an encrypted manifest"
    )
    sealserve("encrypt", "-w", str(key), "-i", str(plain), "-o", str(encrypted))
    leaked = [
        p for p in encrypted.rglob("*") if p.is_file() and b"serving_default" in p.read_bytes()
    ]
    if leaked:
        raise DemoFailed(f"plaintext visible in {leaked[0]}")
    print("  (no file of the encrypted tree contains any of the model's plaintext)")

    step("4. Anyone holding the key can check the whole tree")
    sealserve("verify", "-w", str(key), str(encrypted))

    step(
        "5. The server side loads it in memory only: decrypted into TensorFlow's ram:// "
        "file system, never onto a disk"
    )
    started = time.perf_counter()
    predictions = predict_in_memory(encrypted, key, [1.0, 2.0, 5.0])
    print(
        f"  half_plus_two([1.0, 2.0, 5.0]) = {predictions} "
        f"(loaded and run in {time.perf_counter() - started:.1f} s)"
    )
    if predictions != [2.5, 3.0, 4.5]:
        raise DemoFailed(f"unexpected predictions {predictions}")

    step("6. Tampering is caught and named: a file swapped for another")
    tampered = work / "tampered" / "1"
    shutil.copytree(encrypted, tampered)
    index = tampered / "variables" / "variables.index"
    data = tampered / "variables" / "variables.data-00000-of-00001"
    index_bytes, data_bytes = index.read_bytes(), data.read_bytes()
    index.write_bytes(data_bytes)
    data.write_bytes(index_bytes)
    sealserve("verify", "-w", str(key), str(tampered), expect_failure=True)

    step("7. Rotating the wrap key rewrites only each file's 4 KiB metadata node")
    new_key = work / "keys" / "half_plus_two.next.key"
    sealserve("keygen", "-w", str(new_key))
    rotated = work / "models" / "half_plus_two" / "2"
    sealserve(
        "rekey", "-w", str(key), "--new-key", str(new_key), "-i", str(encrypted), "-o", str(rotated)
    )
    sealserve("verify", "-w", str(new_key), str(rotated))

    step("8. The owner can always get the exact original back")
    decrypted = work / "decrypted"
    sealserve("decrypt", "-w", str(new_key), "-i", str(rotated), "-o", str(decrypted))
    if tree_digest(decrypted) != tree_digest(plain):
        raise DemoFailed("decrypted tree differs from the original")
    print("  the decrypted tree is byte-identical to the original SavedModel")


def predict_in_memory(encrypted: Path, key_path: Path, xs: list[float]) -> list[float]:
    from sealserve.keyfile import read_wrap_key
    from sealserve.model_tree import ProtectedTree
    from sealserve.serving.memory_load import load_protected_saved_model
    from sealserve.serving.tensorflow_runtime import import_tensorflow

    tf = import_tensorflow()

    model = load_protected_saved_model(ProtectedTree(encrypted, read_wrap_key(key_path)))
    result = model.signatures["serving_default"](x=tf.constant(xs))["y"]
    return [float(v) for v in result.numpy()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(".demo"),
        help="where the demo's files go (recreated; default .demo)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        run(args.workdir)
    except DemoFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"\nDemo complete in {time.perf_counter() - started:.0f} s; its files are in "
        f"{args.workdir}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
