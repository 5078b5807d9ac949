"""Serving: export to an AOTInductor package, load it in a fresh process or from C++, reject bad input.

AOTInductor compiles C++ for every package (~25 s on two free cores, more on a busy machine), so the
packages are made once per module: the self-check exports every model class (in two processes), PIMM
and AITM with bag fields included, and the other tests reuse its PIMM packages.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import pimm_fast
import pimm_fast.export as px
from pimm_fast.ops import backends, schemas
from .cpp_example import build_score_csv, run_score_csv

ROOT = Path(__file__).resolve().parents[1]

needs_cpp = pytest.mark.skipif(not backends.is_available("cpp", "cpu"), reason="C++ kernels not built")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def selfcheck_dir(tmp_path_factory) -> Path:
    """Every model class exported once (PIMM on each backbone, the six baselines) and checked against
    eager in a fresh process; see test_every_model_class_matches_eager_in_a_fresh_process."""
    if not backends.is_available("cpp", "cpu"):
        pytest.skip("C++ kernels not built")
    out = tmp_path_factory.mktemp("packages")
    result = subprocess.run([sys.executable, "-m", "pimm_fast.export", "--selfcheck", "--device", "cpu", "--fast",
                             "--jobs", "2", "--out", str(out)], capture_output=True, text=True, env=_env())
    (out / "selfcheck.log").write_text(result.stdout + result.stderr)
    (out / "selfcheck.rc").write_text(str(result.returncode))
    return out


@pytest.fixture(scope="module")
def pimm_package(selfcheck_dir) -> Path:
    path = selfcheck_dir / "pimm-towers.pt2"
    if not path.exists():
        pytest.fail("the self-check did not export PIMM:\n" + (selfcheck_dir / "selfcheck.log").read_text()[-3000:])
    return path


@pytest.fixture(scope="module")
def loaded(pimm_package):
    return px.load(pimm_package)


# ---------------------------------------------------------------------------------------------
# every model class, batch 1 / 7 / 4096 from one package, in a fresh process
# ---------------------------------------------------------------------------------------------
def test_every_model_class_matches_eager_in_a_fresh_process(selfcheck_dir):
    log = (selfcheck_dir / "selfcheck.log").read_text()
    assert (selfcheck_dir / "selfcheck.rc").read_text() == "0", log[-4000:]
    names = ["pimm-towers", "pimm-mmoe", "pimm-ple", "shared_bottom", "esmm", "mmoe", "ple", "aitm", "mncm",
             "pimm-bags", "aitm-bags"]
    for name in names:
        for batch in px.SELFCHECK_BATCHES:
            assert f"{name:>14} batch {batch:>5}: max |package - eager|" in log, (name, batch, log[-3000:])
    assert f"all {len(names) * len(px.SELFCHECK_BATCHES)} cases within 1e-6" in log


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and backends.cuda_compiled()),
                    reason="needs a CUDA device and the CUDA kernels")
def test_every_model_class_on_cuda(tmp_path):
    """The same self-check with CUDA packages (the GPU check script runs it, or the CLI form
    `python -m pimm_fast.export --selfcheck --device cuda`)."""
    result = subprocess.run([sys.executable, "-m", "pimm_fast.export", "--selfcheck", "--device", "cuda", "--fast",
                             "--out", str(tmp_path)], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "all 33 cases within 1e-6" in result.stdout


def test_metadata(pimm_package, loaded):
    meta = px.read_metadata(pimm_package)
    assert meta == loaded.metadata
    assert meta["model_class"] == "PIMM" and meta["field_dims"] == [7, 11, 5, 13]
    assert meta["task_names"] == ["view", "click", "buy"] and meta["num_tasks"] == 3
    assert meta["backend"] == "cpp" and meta["device"] == "cpu" and meta["dynamic_batch"] is True
    assert meta["ops"] == ["embedding_concat.cpp", "pim_attention.cpp"]  # the fused kernels stay fused
    assert meta["pimm_fast_version"] == pimm_fast.__version__ and meta["torch_version"] == torch.__version__
    assert meta["num_dense"] == 0 and meta["dense_names"] == []
    with zipfile.ZipFile(pimm_package) as archive:  # weights beside the .so, as one blob
        names = archive.namelist()
    assert any(n.endswith("_weights.blob") for n in names) and any(n.endswith(".so") for n in names)


# ---------------------------------------------------------------------------------------------
# bad input to a loaded package
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, error, match", [
    (torch.tensor([[0, 0, 0, 13]]), IndexError, r"id 13 at row 0 is out of range for field 3, which has 13 values"),
    (torch.tensor([[0, 0, 0, 0], [0, -1, 0, 0]]), IndexError, r"id -1 at row 1 is out of range for field 1"),
    (torch.zeros(2, 3, dtype=torch.int64), ValueError, r"ids must be \[B, F\] with F = 4 fields, got shape \[2, 3\]"),
    (torch.zeros(4, dtype=torch.int64), ValueError, r"ids must be \[B, F\]"),
    (torch.zeros(2, 4), TypeError, "ids must be int64 or int32, got torch.float32"),
    (torch.zeros(0, 4, dtype=torch.int64), ValueError, r"at least one row \(B >= 1\), got B = 0"),
    ([[0, 0, 0, 0]], TypeError, "ids must be a torch.Tensor"),
])
def test_bad_ids_are_rejected(loaded, ids, error, match):
    with pytest.raises(error, match=match):
        loaded(ids)


def test_int32_ids_and_dense_on_a_model_without_dense(loaded):
    ids = torch.tensor([[1, 2, 3, 4], [6, 10, 4, 12]])
    assert torch.equal(loaded(ids.int()), loaded(ids))
    with pytest.raises(ValueError, match="takes no dense features"):
        loaded(ids, torch.zeros(2, 1))


def assert_kernel_message(error: RuntimeError, pattern: str) -> None:
    """The kernel's error message, as the package's runner passes it on. torch 2.11's AOTInductor runner
    replaces it with its own ("... API call failed at ..."); torch 2.14's keeps it."""
    if torch.__version__ < "2.14":
        pattern = f"{pattern}|API call failed"
    assert re.search(pattern, str(error)), error


def test_kernel_rejects_out_of_range_ids_behind_the_python_check(loaded):
    """The package's own embedding kernel checks ids too (what a C++ caller relies on)."""
    with pytest.raises(RuntimeError) as err:
        loaded._runner(torch.tensor([[0, 0, 0, 1000]]))
    assert_kernel_message(err.value, "(?i)out of range|index")


def test_corrupt_foreign_and_missing_packages(pimm_package, tmp_path):
    with pytest.raises(px.PackageError, match="no such package file"):
        px.load(tmp_path / "missing.pt2")
    text = tmp_path / "notes.pt2"
    text.write_text("not a package")
    with pytest.raises(px.PackageError, match="not a zip archive"):
        px.load(text)
    damaged = tmp_path / "damaged.pt2"
    data = bytearray(pimm_package.read_bytes())
    with zipfile.ZipFile(pimm_package) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith(".so"))
    middle = member.header_offset + 100 + member.compress_size // 2
    data[middle:middle + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    with pytest.raises(px.PackageError, match="corrupt package"):
        px.load(damaged)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(pimm_package.read_bytes()[: len(data) // 2])
    with pytest.raises(px.PackageError, match="not a zip archive|corrupt"):
        px.load(truncated)
    # A .pt2 written by torch.export.save: a valid archive, but not a pimm_fast package.
    foreign = tmp_path / "foreign.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),)), str(foreign))
    with pytest.raises(px.PackageError, match="not a pimm_fast package"):
        px.load(foreign)


def test_package_for_a_wider_instruction_set_is_refused(monkeypatch):
    meta = {"device": "cpu", "cpu_capability": "AVX512"}
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with pytest.raises(px.PackageError, match="compiled for AVX512 CPUs but this CPU supports AVX2"):
        px._check_cpu(meta, Path("m.pt2"))
    px._check_cpu({"device": "cpu", "cpu_capability": "DEFAULT"}, Path("m.pt2"))  # narrower: runs
    px._check_cpu({"device": "cuda", "cpu_capability": "AVX512"}, Path("m.pt2"))  # not a CPU package


def test_cuda_package_on_cpu_is_refused(pimm_package):
    with pytest.raises(px.PackageError, match="compiled for cpu, it cannot run on cuda"):
        px.load(pimm_package, device="cuda")


@needs_cpp
def test_model_with_dense_features(tmp_path):
    """Dense features [B, K] travel into the package with the model's training statistics."""
    import inspect

    if "num_dense" not in inspect.signature(pimm_fast.PIMM.__init__).parameters:
        pytest.skip("the models take no dense features in this tree")
    model = pimm_fast.PIMM([5, 6], num_tasks=2, num_dense=2)
    raw = torch.randn(64, 2) * 3 + 1
    raw[0, 1] = float("nan")
    model.dense_input.fit(raw)
    model.eval()
    path = px.save(model, tmp_path / "dense.pt2", inductor_configs={"aot_inductor.compile_wrapper_opt_level": "O0"})
    fn = px.load(path)
    meta = fn.metadata
    assert meta["num_dense"] == 2 and meta["dense_names"] == list(model.dense_input.names)
    assert torch.allclose(torch.tensor(meta["dense_mean"]), model.dense_input.mean.double().float())
    assert torch.allclose(torch.tensor(meta["dense_std"]), model.dense_input.std.double().float())
    ids = torch.stack([torch.randint(0, 5, (9,)), torch.randint(0, 6, (9,))], 1)
    dense = raw[:9]
    assert (fn(ids, dense) - model(ids, dense=dense)).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match="takes 2 dense features"):
        fn(ids)
    with pytest.raises(ValueError, match=r"dense must be \[B, K\] = \[9, 2\]"):
        fn(ids, dense[:, :1])
    with pytest.raises(TypeError, match="dense must be a float tensor"):
        fn(ids, dense.long())


@needs_cpp
def test_static_batch(tmp_path):
    model = pimm_fast.ESMM([5, 6], num_tasks=2, tower_dims=(8,)).eval()
    example = torch.tensor([[0, 1], [2, 3], [4, 5]])
    path = px.save(model, tmp_path / "static.pt2", example=example, dynamic_batch=False,
                   inductor_configs={"aot_inductor.compile_wrapper_opt_level": "O0"})
    fn = px.load(path)
    assert fn.metadata["dynamic_batch"] is False and fn.metadata["batch"] == 3
    ids = torch.tensor([[1, 1], [3, 0], [4, 2]])
    assert (fn(ids) - model(ids)).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match=r"exported for batch 3 \(dynamic_batch=False\), got B = 2"):
        fn(ids[:2])


# ---------------------------------------------------------------------------------------------
# what save refuses (all before the C++ compile)
# ---------------------------------------------------------------------------------------------
@needs_cpp
def test_reference_path_by_accident_is_an_error(tmp_path):
    model = pimm_fast.PIMM([5, 6], num_tasks=2, backend="reference")
    with pytest.raises(px.ExportError, match="runs on the reference path"):
        px.save(model, tmp_path / "m.pt2")
    with pytest.raises(px.ExportError, match="runs on the reference path"):
        px.save(model, tmp_path / "m.pt2", backend="cpp")
    assert not (tmp_path / "m.pt2").exists()


@needs_cpp
def test_backend_other_than_asked_is_an_error(tmp_path):
    model = pimm_fast.PIMM([5, 6], num_tasks=2, backend="cpp")
    with pytest.raises(px.ExportError, match="backend 'reference' was asked but the model calls fused kernels"):
        px.save(model, tmp_path / "m.pt2", backend="reference")
    if backends.is_available("triton", "cpu"):
        with pytest.raises(px.ExportError, match="Triton kernels are launched from Python"):
            px.save(model, tmp_path / "m.pt2", backend="triton")


def test_save_argument_errors(tmp_path):
    model = pimm_fast.PIMM([5, 6], num_tasks=2)
    with pytest.raises(px.ExportError, match=r"must end in \.pt2"):
        px.save(model, tmp_path / "m.zip")
    with pytest.raises(px.ExportError, match=r"example ids must be \[B, 2\]"):
        px.save(model, tmp_path / "m.pt2", example=torch.zeros(3, 5, dtype=torch.int64))
    with pytest.raises(px.ExportError, match="not a pimm_fast cascade model|expected a pimm_fast cascade model"):
        px.save(torch.nn.Linear(2, 2), tmp_path / "m.pt2")
    middle = pimm_fast.FieldEmbedding([5, 6, 7], 4, pooling=["sum", "mean", "sum"])
    with pytest.raises(px.ExportError, match=r"mean-pooled \(bag\) fields \[1\] are not the last fields"):
        px.save(pimm_fast.PIMM([5, 6, 7], num_tasks=2, embedding=middle), tmp_path / "m.pt2")
    bags = pimm_fast.PIMM([5, 6, 7], num_tasks=2, embedding=pimm_fast.FieldEmbedding([5, 6, 7], 4,
                                                                                   pooling=["sum", "sum", "mean"]))
    for bad in (4, -1, True, "1"):
        with pytest.raises(px.ExportError, match=r"num_bag_fields must be an int in \[0, 3\]"):
            px.save(bags, tmp_path / "m.pt2", num_bag_fields=bad)
    with pytest.raises(px.ExportError, match=r"example must be a tuple \(ids, bag_values, bag_offsets\)"):
        px.save(bags, tmp_path / "m.pt2", example=torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(px.ExportError, match=r"example ids must be \[B, 2\] \(the 2 single-valued fields\)"):
        example = (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), torch.tensor([0, 1, 2]))
        px.save(bags, tmp_path / "m.pt2", example=example)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# validate_labels: one schema list, a C++ kernel, kept by compilers in eval mode
# ---------------------------------------------------------------------------------------------
def test_schemas_come_from_one_file_with_all_three_overloads():
    fused, plain = schemas.parse_schema_file(schemas.SCHEMA_FILE.read_text())
    assert set(fused) == set(schemas.FUSED_OPS) and plain == schemas.PLAIN_OPS
    for name, schema in fused.items():
        for backend in schemas.KERNEL_BACKENDS:
            registered = str(schemas.op(name, backend)._schema)
            assert registered == str(torch._C.parse_schema(f"pimm_fast::{name}.{backend}{schema}")), registered
    assert str(torch.ops.pimm_fast.validate_labels.default._schema) == \
        "pimm_fast::validate_labels(Tensor labels, int num_tasks, bool cascade=True) -> Tensor"


def test_has_op_knows_which_triton_kernels_exist():
    from pimm_fast.ops import triton_impl

    assert set(triton_impl._MODULES) == schemas.TRITON_KERNELS  # update both when a Triton kernel lands
    assert schemas.has_op("embedding_concat", "triton") and schemas.has_op("embedding_bags_concat", "cpp")


def test_schema_file_parse_errors():
    with pytest.raises(ValueError, match="cannot parse"):
        schemas.parse_schema_file('PIMM_FAST_FUSED_OP(x "(Tensor a) -> Tensor")')
    with pytest.raises(ValueError, match="defined twice"):
        schemas.parse_schema_file('PIMM_FAST_PLAIN_OP(x, "() -> ()")\nPIMM_FAST_FUSED_OP(x, "() -> ()")')


@needs_cpp
def test_validate_labels_has_a_cpp_kernel():
    assert schemas.SCHEMAS_FROM_LIBRARY
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pimm_fast::validate_labels",
                                                          "CompositeExplicitAutograd")
    y = torch.tensor([[0, 1], [1, 1]])
    assert torch.equal(pimm_fast.ops.validate_labels(y, 2, cascade=False), y.float())
    with pytest.raises(ValueError, match="labels break the cascade at row 0: task 1 is 1 but task 0 is 0"):
        pimm_fast.ops.validate_labels(y, 2)
    out = pimm_fast.ops.validate_labels(torch.ones(2, 2), 2)
    assert out.dtype == torch.float32


BAD_LABELS = [
    (torch.tensor([[0, 1], [1, 1], [1, 0], [0, 0]]), r"labels break the cascade at row 0: task 1 is 1 but task 0"),
    (torch.tensor([[1.0, 0.5], [1, 1], [1, 0], [0, 0]]), r"labels must be 0 or 1: got 0.5 at row 0, task 1"),
]


@pytest.mark.parametrize("labels, match", BAD_LABELS)
def test_bad_labels_raise_under_compile_as_in_eager(labels, match):
    """In eval mode the models only check the labels (the output is unused): the op must not be dropped."""
    torch._dynamo.reset()
    model = pimm_fast.PIMM([5, 6], num_tasks=2).eval()
    x = torch.randint(0, 5, (4, 2))
    with pytest.raises(ValueError, match=match):
        model(x, labels=labels)
    with pytest.raises(ValueError, match=match):
        torch.compile(model)(x, labels=labels)
    good = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1]])
    assert torch.allclose(torch.compile(model)(x, labels=good), model(x, labels=good))


def test_export_in_eval_mode_keeps_validate_labels():
    model = pimm_fast.PIMM([5, 6], num_tasks=2).eval()
    x, y = torch.randint(0, 5, (4, 2)), torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1]])
    exported = torch.export.export(model, (x,), {"labels": y})
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert "pimm_fast.validate_labels.default" in targets
    with pytest.raises(ValueError, match="labels break the cascade"):
        exported.module()(x, labels=torch.tensor([[0, 1], [1, 1], [1, 0], [0, 0]]))


# ---------------------------------------------------------------------------------------------
# C++: the example program scores a CSV with the package, without Python
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def score_csv(tmp_path_factory) -> Path:
    return build_score_csv(tmp_path_factory)  # once per session, from a copy of examples/


def _run_cpp(binary: Path, package: Path, csv: Path) -> subprocess.CompletedProcess:
    return run_score_csv(binary, package, csv, "--ids")  # pre-encoded ids (raw values: test_export_vocab.py)


@needs_cpp
@pytest.mark.parametrize("name", ["pimm-towers", "aitm", "ple"])
def test_cpp_example_matches_python(score_csv, selfcheck_dir, tmp_path, name):
    case = torch.load(selfcheck_dir / f"{name}-7.pt")
    csv = tmp_path / "ids.csv"
    csv.write_text("f0,f1,f2,f3\n" + "".join(",".join(str(int(v)) for v in row) + "\n" for row in case["ids"]))
    result = _run_cpp(score_csv, selfcheck_dir / f"{name}.pt2", csv)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "p_view,p_click,p_buy"
    probs = torch.tensor([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert probs.shape == case["expected"].shape
    assert (probs - case["expected"]).abs().max().item() <= 1e-6


@needs_cpp
def test_cpp_example_rejects_bad_ids(score_csv, pimm_package, tmp_path):
    for row, match in [("0,0,0,13", "id 13 is out of range for field 3, which has 13 values"),
                       ("0,-2,0,0", "id -2 is out of range for field 1"),
                       ("0,0,0", "expected 4 id columns, got 3 columns"),
                       ("0,x,0,0", "not an integer id")]:
        csv = tmp_path / "bad.csv"
        csv.write_text("1,2,3,4\n" + row + "\n")
        result = _run_cpp(score_csv, pimm_package, csv)
        assert result.returncode == 1 and match in result.stderr, result.stderr[-2000:]
        assert result.stdout == ""
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("1,2,3,4\n")
    result = _run_cpp(score_csv, tmp_path / "missing.pt2", foreign)
    assert result.returncode == 1 and "score_csv: error:" in result.stderr


# ---------------------------------------------------------------------------------------------
# models with bag fields: ids [B, F_single], bag_values, bag_offsets
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bag_package(selfcheck_dir) -> Path:
    path = selfcheck_dir / "pimm-bags.pt2"
    if not path.exists():
        pytest.fail("the self-check did not export PIMM with bags:\n"
                    + (selfcheck_dir / "selfcheck.log").read_text()[-3000:])
    return path


@pytest.fixture(scope="module")
def bag_loaded(bag_package):
    return px.load(bag_package)


def _bag_fields(*fields):
    """Bag fields given as lists of per-row id lists -> one (ids, offsets [B + 1]) per field."""
    return [(torch.tensor([i for bag in rows for i in bag], dtype=torch.int64),
             torch.tensor([0] + [len(bag) for bag in rows]).cumsum(0)) for rows in fields]


def _bags(*fields):
    """(bag_values, bag_offsets) of bag fields given as lists of per-row id lists: the package's layout."""
    from pimm_fast.modules import JaggedIds

    packed = JaggedIds.from_fields(_bag_fields(*fields))
    return packed.values, packed.bag_offsets


def test_bag_package_metadata_and_eager_parity_in_process(selfcheck_dir, bag_loaded):
    """The contract recorded in the metadata; parity with eager for mixed, all-empty bags and int32 inputs
    (the fresh-process parity at batch 1, 7, 4096 is the self-check's)."""
    from pimm_fast.modules import JaggedIds

    meta = bag_loaded.metadata
    assert isinstance(bag_loaded, px.ExportedBagModel) and meta["format"] == px.BAG_FORMAT_VERSION
    assert meta["field_dims"] == [7, 11, 5, 13, 9] and meta["num_bag_fields"] == 2
    assert meta["inputs"] == ["ids", "bag_values", "bag_offsets"] and meta["bag_pooling"] == ["mean", "mean"]
    assert meta["ops"] == ["embedding_bags_concat.cpp", "pim_attention.cpp"]
    aitm = px.read_metadata(selfcheck_dir / "aitm-bags.pt2")
    assert aitm["num_bag_fields"] == 2 and aitm["bag_pooling"] == ["sum", "mean"]
    assert px.read_metadata(selfcheck_dir / "pimm-towers.pt2")["num_bag_fields"] == 0
    model = px._selfcheck_models("cpu")["pimm-bags"]  # the same weights (seeded) as the exported model
    ids = torch.tensor([[1, 2, 3], [6, 10, 4], [0, 0, 0]])
    for fields in (([[1, 12], [], [3]], [[8], [0, 1, 2, 3, 4, 5, 6], []]),  # varying lengths, empty bags
                   ([[], [], []], [[], [], []])):  # no value at all
        x = JaggedIds.from_fields([ids[:, f] for f in range(3)] + _bag_fields(*fields))
        with torch.no_grad():
            expected = model(x)
        values, offsets = _bags(*fields)
        got = bag_loaded(ids, values, offsets)
        assert (got - expected).abs().max().item() <= 1e-6
        assert torch.equal(bag_loaded(ids.int(), values.int(), offsets.int()), got)


@needs_cpp
def test_bags_with_dense_features_and_a_static_batch(tmp_path):
    """Bags, dense features and dynamic_batch=False together; a field with sum pooling before the bags, and
    a value count that differs from the example's (always dynamic)."""
    from pimm_fast.modules import JaggedIds

    torch.manual_seed(0)
    embedding = pimm_fast.FieldEmbedding([5, 6, 7], 4, pooling=["sum", "mean", "mean"])
    model = pimm_fast.ESMM([5, 6, 7], num_tasks=2, tower_dims=(8,), embedding=embedding, num_dense=2)
    model.dense_input.fit(torch.randn(50, 2))
    model.eval()
    example = (torch.zeros(3, 1, dtype=torch.int64), torch.zeros(2, dtype=torch.int64),
               torch.tensor([0, 1, 1, 1, 2, 2, 2]), torch.zeros(3, 2))
    path = px.save(model, tmp_path / "bags-dense.pt2", example=example, dynamic_batch=False,
                   inductor_configs={"aot_inductor.compile_wrapper_opt_level": "O0"})
    fn = px.load(path)
    assert fn.metadata["inputs"] == ["ids", "bag_values", "bag_offsets", "dense"] and fn.metadata["batch"] == 3
    ids, fields = torch.tensor([[1], [4], [0]]), _bag_fields([[], [1, 2, 5], []], [[6], [], [6, 0, 1]])
    values, offsets = _bags([[], [1, 2, 5], []], [[6], [], [6, 0, 1]])
    dense = torch.tensor([[0.5, float("nan")], [1.0, 2.0], [-1.0, 0.0]])
    expected = model(JaggedIds.from_fields([ids[:, 0]] + fields), dense=dense)
    assert (fn(ids, values, offsets, dense) - expected).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match=r"exported for batch 3 \(dynamic_batch=False\), got B = 2"):
        fn(ids[:2], values[:3], torch.tensor([0, 0, 3, 4, 4]), dense[:2])
    with pytest.raises(ValueError, match=r"dense must be \[B, K\] = \[3, 2\]"):
        fn(ids, values, offsets, dense[:, :1])
    with pytest.raises(ValueError, match="takes 2 dense features"):
        fn(ids, values, offsets)


def _bad_bag_cases():
    ids = torch.tensor([[1, 2, 3], [0, 0, 0]])
    values, offsets = _bags([[1], []], [[2, 3], [4]])  # offsets [0, 1, 1, 3, 4]
    return [
        ((ids, values, offsets[:-1]), ValueError, r"bag_offsets must have F_bag \* B \+ 1 = 2 \* 2 \+ 1 = 5 entries"),
        ((ids, values, offsets + 1), ValueError, "bag_offsets must start at 0, got 1"),
        ((ids, values, torch.tensor([0, 2, 1, 3, 4])), ValueError,
         r"must not decrease: bag_offsets\[2\] = 1 < bag_offsets\[1\] = 2 \(the bag of row 1 of field 3"),
        ((ids, values, torch.tensor([0, 1, 1, 3, 3])), ValueError, r"must end at len\(bag_values\) = 4, got 3"),
        ((ids, torch.tensor([13, 2, 3, 4]), offsets), IndexError,
         r"bag id 13 at bag_values\[0\] \(row 0 of field 3\) is out of range for field 3, which has 13 values"),
        ((ids, torch.tensor([1, 2, 3, 9]), offsets), IndexError,
         r"bag id 9 at bag_values\[3\] \(row 1 of field 4\) is out of range for field 4, which has 9 values"),
        ((ids, torch.tensor([1, -2, 3, 4]), offsets), IndexError, r"bag id -2 at bag_values\[1\] \(row 0 of field 4\)"),
        ((torch.tensor([[1, 2, 5], [0, 0, 0]]), values, offsets), IndexError,
         r"id 5 at row 0 is out of range for field 2, which has 5 values"),
        ((ids, values.float(), offsets), TypeError, "bag_values must be int64 or int32, got torch.float32"),
        ((ids, values, offsets.double()), TypeError, "bag_offsets must be int64 or int32, got torch.float64"),
        ((ids.float(), values, offsets), TypeError, "ids must be int64 or int32"),
        ((ids, values.view(2, 2), offsets), ValueError, r"bag_values must be 1-D, got shape \[2, 2\]"),
        ((ids, [1, 2, 3, 4], offsets), TypeError, "bag_values must be a torch.Tensor"),
        ((torch.zeros(2, 5, dtype=torch.int64), values, offsets), ValueError,
         r"ids must be \[B, 3\] \(the 3 single-valued fields; the 2 bag fields come as bag_values and bag_offsets\)"),
        ((ids[:0], values[:0], torch.zeros(1, dtype=torch.int64)), ValueError,
         r"at least one row \(B >= 1\), got B = 0"),
        ((ids, values, offsets, torch.zeros(2, 1)), ValueError, "takes no dense features"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_bag_cases())))
def test_bad_bag_inputs_are_rejected(bag_loaded, case):
    args, error, match = _bad_bag_cases()[case]
    with pytest.raises(error, match=match):
        bag_loaded(*args)


def test_kernel_rejects_bad_bags_behind_the_python_check(bag_loaded):
    """What a C++ caller that skips the checks gets from the package's embedding kernel: an error."""
    ids = torch.tensor([[1, 2, 3], [0, 0, 0]])
    with pytest.raises(RuntimeError) as err:
        bag_loaded._runner(ids, torch.tensor([1, 2, 3, 100]), torch.tensor([0, 1, 1, 3, 4]))
    assert_kernel_message(err.value, "(?i)out of range|index")
    with pytest.raises(RuntimeError) as err:
        bag_loaded._runner(ids, torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2, 1, 3, 4]))
    assert_kernel_message(err.value, "bag_offsets must run from 0 to the number of values")


@needs_cpp
def test_cpp_example_scores_bags(score_csv, selfcheck_dir, tmp_path):
    """Bag cells hold '|'-separated ids (empty = empty bag); the C++ program matches eager."""
    case = torch.load(selfcheck_dir / "pimm-bags-7.pt")
    ids, values, offsets = case["inputs"]
    batch, bags = ids.shape[0], (offsets.numel() - 1) // ids.shape[0]
    def cell(k, b):  # the ids of bag field k, row b, separated by '|'
        return "|".join(str(int(v)) for v in values[offsets[k * batch + b]:offsets[k * batch + b + 1]])

    rows = [",".join([str(int(v)) for v in ids[b]] + [cell(k, b) for k in range(bags)]) for b in range(batch)]
    assert any(",," in r or r.endswith(",") for r in rows)  # an empty bag is in the file
    csv = tmp_path / "bags.csv"
    csv.write_text("f0,f1,f2,tags,history\n" + "\n".join(rows) + "\n")
    result = _run_cpp(score_csv, selfcheck_dir / "pimm-bags.pt2", csv)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "p_view,p_click,p_buy"
    probs = torch.tensor([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert (probs - case["expected"]).abs().max().item() <= 1e-6
    for row, match in [("0,0,0,1|13,2", "id 13 is out of range for field 3 (bag), which has 13 values"),
                       ("0,0,0,1,-1", "id -1 is out of range for field 4 (bag)"),
                       ("0,0,0,1|x,2", "field 3 (bag): not integer ids separated by '|': '1|x'"),
                       ("0,0,0,1", "expected 3 id columns, 2 bag columns, got 4 columns")]:
        csv.write_text("f0,f1,f2,tags,history\n" + row + "\n")
        result = _run_cpp(score_csv, selfcheck_dir / "pimm-bags.pt2", csv)
        assert result.returncode == 1 and match in result.stderr, result.stderr[-2000:]
        assert result.stdout == ""


@needs_cpp
def test_cli_export_and_predict_with_bags(tmp_path, capsys):
    """Ali-CCP's 23-field layout (17 single-valued fields + 6 mean-pooled bags, some empty): train,
    `pimm-fast export`, then `predict --model` gives the checkpoint's predictions."""
    import pyarrow.parquet as pq

    from pimm_fast import cli
    from pimm_fast.data.aliccp import write_synthetic_raw

    write_synthetic_raw(tmp_path, "train", num_rows=1500, seed=1)
    write_synthetic_raw(tmp_path, "test", num_rows=600, seed=2)
    data, run = f"aliccp-raw:{tmp_path}?variant=full&cache=none&min_count=1", tmp_path / "run"
    assert cli.main(["train", "--data", data, "--model", "pimm", "--embed-dim", "4", "--tower-dims", "16,8",
                     "--seed", "3", "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    package = tmp_path / "model.pt2"
    result = subprocess.run([sys.executable, "-m", "pimm_fast", "export", "--checkpoint", str(run),
                             "--out", str(package)], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported PIMM (23 fields (6 of them bags)" in result.stdout
    meta = px.read_metadata(package)
    assert meta["num_bag_fields"] == 6 and meta["bag_pooling"] == ["mean"] * 6 and len(meta["field_names"]) == 23
    assert meta["field_names"][17:] == ["210", "853", "109_14", "110_14", "127_14", "150_14"]
    by_package, by_checkpoint = tmp_path / "package.parquet", tmp_path / "checkpoint.parquet"
    assert cli.main(["predict", "--model", str(package), "--data", data, "--out", str(by_package)]) == 0
    assert cli.main(["predict", "--checkpoint", str(run), "--out", str(by_checkpoint)]) == 0
    a, b = pq.read_table(by_package).to_pydict(), pq.read_table(by_checkpoint).to_pydict()
    assert list(a) == list(b) and len(a["p_click"]) == 600
    for column in a:
        if column.startswith("p_"):
            assert (torch.tensor(a[column]) - torch.tensor(b[column])).abs().max().item() <= 1e-6, column
        else:
            assert a[column] == b[column], column
    # data without the bags does not fit the package
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(package), "--data", data.replace("variant=full", "variant=aitm"),
                     "--out", str(tmp_path / "x.parquet")]) == 2
    assert "are not the 'aitm' variant's" in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()


# ---------------------------------------------------------------------------------------------
# command line: pimm-fast export --checkpoint DIR --out model.pt2
# ---------------------------------------------------------------------------------------------
@needs_cpp
def test_cli_export_from_a_checkpoint(tmp_path):
    from pimm_fast import cli
    from pimm_fast.commands.run import load_run_model

    run = tmp_path / "run"
    assert cli.main(["train", "--data", "synthetic:demo", "--samples", "3000", "--model", "esmm", "--embed-dim", "4",
                     "--tower-dims", "16,8", "--seed", "3", "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    out = tmp_path / "model.pt2"
    result = subprocess.run([sys.executable, "-m", "pimm_fast", "export", "--checkpoint", str(run), "--out", str(out)],
                            capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported ESMM" in result.stdout
    model, _, _, test, splits = load_run_model(run, None, "cpu")  # the trained weights (best epoch), as evaluate reads them
    fn = px.load(out)
    assert fn.metadata["field_names"] == list(splits.field_names)
    assert fn.metadata["task_names"] == list(test.task_names)
    ids = test.x[:257]
    assert (fn(ids) - model.eval()(ids)).abs().max().item() <= 1e-6


def test_cli_export_errors(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "pimm_fast", "export", *argv], capture_output=True, text=True,
                              env=_env())

    result = run("--checkpoint", str(tmp_path), "--out", str(tmp_path / "m.pt2"))
    assert result.returncode == 2 and result.stderr.startswith("pimm-fast: error:") and "no checkpoint at" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "checkpoint.pt").write_text("garbage")
    result = run("--checkpoint", str(tmp_path), "--out", str(tmp_path / "m.pt2"))
    assert result.returncode == 2 and "truncated or not a torch checkpoint" in result.stderr
    torch.save({"weights": {}}, tmp_path / "checkpoint.pt")
    result = run("--checkpoint", str(tmp_path), "--out", str(tmp_path / "m.pt2"))
    assert result.returncode == 2 and "is not a pimm_fast checkpoint" in result.stderr
    result = run("--checkpoint", str(tmp_path), "--out", str(tmp_path / "m.zip"))
    assert result.returncode == 2 and "--out must name a .pt2 file" in result.stderr
