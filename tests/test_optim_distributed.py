"""Distributed Muon: 2 gloo processes on loopback against one process.

The test runs this file as a script once per rank (``python test_optim_distributed.py RANK WORLD
PORT OUT``); each rank saves its results, and the test compares them with a single-process run.
Four setups: replicated parameters with identical gradients (plus a row-split parameter), DDP with
a different half-batch per rank through MuonWithAdamW, the same under FSDP2 (``fully_shard``: every
parameter a DTensor shard), and bare DTensor (Shard(0)) parameters. A second pair of processes
(``python test_optim_distributed.py mismatch RANK WORLD PORT OUT``) builds optimizers whose
parameters differ across ranks and records what each rank raised.
"""

import json
import os
import socket
import subprocess
import sys
from collections import OrderedDict

import torch
from torch import nn

from muonscope.errors import DistributedMismatchError
from muonscope.optim import Muon, MuonWithAdamW
from muonscope.optim.distributed import assign_owners, layout_mismatch, layout_row

STEPS = 4


def _model():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        l0=nn.Linear(12, 24), a0=nn.Tanh(), l1=nn.Linear(24, 24), a1=nn.Tanh(), l2=nn.Linear(24, 24),
        a2=nn.Tanh(), l3=nn.Linear(24, 48), a3=nn.Tanh(), l4=nn.Linear(48, 24), a4=nn.Tanh(),
        head=nn.Linear(24, 6)))


def _data(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 12, generator=g), torch.randn(16, 6, generator=g)


def _loss(model, x, y):
    return nn.functional.mse_loss(model(x), y)


class _Names:
    def __init__(self):
        self.names = []

    def wants_spectrum(self, step):
        return step == 2

    def on_orthogonalize(self, event):
        assert (event.spectrum is not None) == (event.step == 2)
        self.names.append((event.step, event.name, event.process_rank))


def run_replicated(extra_param):
    """Muon on hidden weights (and a 3-block split param), identical gradients everywhere."""
    model = _model()
    weights = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    opt = Muon([{"params": weights}, {"params": [("qkv", extra_param)], "split": 3}], lr=0.02,
               weight_decay=0.1, ns_dtype=torch.float32)
    rec = _Names()
    opt.register_orth_hook(rec)
    for step in range(STEPS):
        x, y = _data(step)
        opt.zero_grad()
        _loss(model, x, y).backward()
        g = torch.Generator().manual_seed(7 + step)
        extra_param.grad = torch.randn(extra_param.shape, generator=g)
        opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    params["qkv"] = extra_param.detach().clone()
    return params, rec.names, dict(opt.stats)


def run_combined(model, rank=0, world=1):
    """MuonWithAdamW; with world > 1 ``model`` is DDP-wrapped and each rank sees half the batch."""
    inner = model.module if hasattr(model, "module") else model
    opt = MuonWithAdamW(inner, lr=0.02, weight_decay=0.1, adamw_lr=1e-2, ns_dtype=torch.float32)
    for step in range(STEPS):
        x, y = _data(step)
        opt.zero_grad()
        _loss(model, x.chunk(world)[rank], y.chunk(world)[rank]).backward()
        opt.step()
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in inner.named_parameters()}


def _dtensor_problem():
    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(16, 10, generator=g), torch.randn(8, 8, generator=g), torch.randn(16, 10, generator=g)]
    grads = [[torch.randn(w.shape, generator=g) for w in ws] for _ in range(STEPS)]
    return ws, grads


def run_dtensor(mesh=None):
    ws, grads = _dtensor_problem()
    if mesh is not None:
        from torch.distributed.tensor import Shard, distribute_tensor

        params = [nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in ws]
    else:
        params = [nn.Parameter(w.clone()) for w in ws]
    opt = Muon(params, lr=0.05, weight_decay=0.1, ns_dtype=torch.float32)
    for step in range(STEPS):
        for p, gr in zip(params, grads[step], strict=True):
            p.grad = distribute_tensor(gr, mesh, [Shard(0)]) if mesh is not None else gr.clone()
        opt.step()
    return [p.full_tensor().detach() if mesh is not None else p.detach().clone() for p in params]


def _worker(rank, world, port, out):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(11)
        replicated = run_replicated(nn.Parameter(torch.randn(18, 10)))
        ddp = DistributedDataParallel(_model())
        combined = run_combined(ddp, rank, world)
        mesh = init_device_mesh("cpu", (world,))
        dtensor = run_dtensor(mesh)
        from torch.distributed.fsdp import fully_shard

        model = _model()
        for module in model:
            if isinstance(module, nn.Linear):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        fsdp = run_combined(model, rank, world)
        torch.save({"replicated": replicated, "combined": combined, "dtensor": dtensor, "fsdp": fsdp}, out)
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise


def _mismatched(case, rank):
    """An optimizer over parameters that differ on rank 1 as ``case`` says, with gradients."""
    g = torch.Generator().manual_seed(3)
    shapes = [(8, 6), (6, 10)]
    dtypes = [torch.float32, torch.float32]
    if case == "shape" and rank == 1:
        shapes[1] = (6, 11)
    if case == "dtype" and rank == 1:
        dtypes[1] = torch.float64
    plan = {"params": {"w0": {"steps": 7}}} if case == "plan" and rank == 1 else None
    if case == "extra" and rank == 1:
        shapes.append((4, 4))
        dtypes.append(torch.float32)
    params = [(f"w{i}", nn.Parameter(torch.randn(s, generator=g, dtype=dt)))
              for i, (s, dt) in enumerate(zip(shapes, dtypes, strict=True))]
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    if case == "no_grad" and rank == 1:  # the step's collectives would cover other matrices
        params[1][1].grad = None
    if case == "adamw_extra":  # an extra AdamW bias on rank 1: AdamW's non-finite screen is a collective too
        groups = [{"params": params, "use_muon": True},
                  {"params": [("b0", nn.Parameter(torch.zeros(6)))] + ([("b1", nn.Parameter(torch.zeros(3)))]
                                                                      if rank == 1 else []), "use_muon": False}]
        for _, p in groups[1]["params"]:
            p.grad = torch.ones(p.shape)
        return MuonWithAdamW(groups, lr=0.02, ns_dtype=torch.float32), [p for _, p in params]
    return Muon(params, lr=0.02, ns_dtype=torch.float32, plan=plan), [p for _, p in params]


MISMATCHES = ("shape", "extra", "dtype", "adamw_extra", "no_grad", "plan")


def _mismatch_worker(rank, world, port, out):
    """Step each mismatched optimizer; record the error type and message, and whether the
    parameters were left untouched; then check that a matching optimizer still steps."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = {}
        for case in MISMATCHES:
            opt, params = _mismatched(case, rank)
            before = [p.detach().clone() for p in params]
            try:
                opt.step()
                res[case] = ["no error", ""]
            except Exception as exc:  # noqa: BLE001 - the test compares the exact type
                res[case] = [type(exc).__name__, str(exc)]
            res[case].append(all(torch.equal(a, p) for a, p in zip(before, params, strict=True)))
        opt, params = _mismatched("none", rank)
        opt.step()
        res["after"] = [p.detach().tolist() for p in params]
        if rank == 1:  # a group added on one rank only: found on the next step
            opt.add_param_group({"params": [("late", nn.Parameter(torch.zeros(4, 4)))]})
        for p in params:
            p.grad = torch.ones(p.shape)
        try:
            opt.step()
            res["added_later"] = ["no error", "", True]
        except Exception as exc:  # noqa: BLE001
            res["added_later"] = [type(exc).__name__, str(exc), all(torch.equal(torch.tensor(a), p)
                                                                   for a, p in zip(res["after"], params, strict=True))]
        with open(out, "w") as f:
            json.dump(res, f)
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one(tmp_path):
    world, port = 2, _free_port()
    outs = [tmp_path / f"rank{r}.pt" for r in range(world)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(world), str(port), str(outs[r])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=180)[0].decode())
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    res = [torch.load(o, weights_only=True) for o in outs]

    torch.manual_seed(11)
    ref_params, ref_events, ref_stats = run_replicated(nn.Parameter(torch.randn(18, 10)))
    ref_combined = run_combined(_model())
    ref_dtensor = run_dtensor()

    # Every rank ends with bit-identical parameters ...
    for key in ("replicated", "combined", "fsdp"):
        a, b = (r[key][0] if key == "replicated" else r[key] for r in res)
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(x, y) for x, y in zip(res[0]["dtensor"], res[1]["dtensor"], strict=True))
    # ... equal to one process up to fp32 summation order (batched vs. single products; DDP's
    # all-reduced mean vs. a full-batch mean).
    for n, p in ref_params.items():
        torch.testing.assert_close(res[0]["replicated"][0][n], p, rtol=0, atol=2e-6)
    for n, p in ref_combined.items():
        torch.testing.assert_close(res[0]["combined"][n], p, rtol=0, atol=2e-5)
        torch.testing.assert_close(res[0]["fsdp"][n], p, rtol=0, atol=2e-5)
    for x, y in zip(res[0]["dtensor"], ref_dtensor, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=2e-6)

    # Each matrix is orthogonalized (and reported) by exactly one rank, work split by FLOPs.
    events = [e for r in res for e in r["replicated"][1]]
    assert sorted((s, n) for s, n, _ in events) == sorted((s, n) for s, n, _ in ref_events)
    ranks = {r for _, _, r in events}
    assert ranks == {0, 1}
    s0, s1 = (r["replicated"][2] for r in res)
    assert s0["last_ns_flops"] == s1["last_ns_flops"] == ref_stats["last_ns_flops"]
    assert s0["last_local_ns_flops"] + s1["last_local_ns_flops"] == ref_stats["last_ns_flops"]
    assert max(s0["last_local_ns_flops"], s1["last_local_ns_flops"]) <= 0.75 * ref_stats["last_ns_flops"]


def test_mismatched_ranks_raise_the_same_error_on_every_rank(tmp_path):
    """Shape, dtype, an extra Muon parameter, an extra AdamW parameter, a group added later on one
    rank, a gradient missing on one rank, another plan on one rank: both ranks raise the same DistributedMismatchError before any update (bounded: each
    process is joined with a timeout)."""
    world, port = 2, _free_port()
    outs = [tmp_path / f"rank{r}.json" for r in range(world)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "mismatch", str(r), str(world), str(port), str(outs[r])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0].decode())
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    r0, r1 = (json.loads(o.read_text()) for o in outs)
    for case, where in (("shape", "'w1'"), ("extra", "'w2'"), ("dtype", "float64"), ("adamw_extra", "'b1'"),
                        ("added_later", "'late'"), ("no_grad", "without a gradient"), ("plan", "jordanx7")):
        assert r0[case] == r1[case], case  # same type, same message, both untouched
        kind, message, untouched = r0[case]
        assert kind == DistributedMismatchError.__name__, (case, message)
        assert where in message and "rank 0" in message and "rank 1" in message, message
        assert untouched
    assert r0["after"] == r1["after"]  # the ranks are still in step: a matching optimizer works


def test_layout_mismatch_names_the_first_difference():
    a, b = nn.Parameter(torch.zeros(4, 6)), nn.Parameter(torch.zeros(4, 7))
    rows = [layout_row(0, "x", a, "matrix"), layout_row(0, "y", a, "matrix")]
    assert layout_mismatch([rows, list(rows)]) is None
    other = [rows[0], layout_row(0, "y", b, "matrix")]
    msg = layout_mismatch([rows, rows, other])
    assert "at parameter 1" in msg and "rank 2" in msg and "(4, 7)" in msg and "(4, 6)" in msg
    msg = layout_mismatch([rows, rows[:1]])
    assert "no parameter" in msg and "rank 1: 1" in msg
    msg = layout_mismatch([[(*r, True) for r in rows], [(*rows[0], True), (*rows[1], False)]])
    assert "without a gradient" in msg and "gradients for the same parameters" in msg


def test_assign_owners_balances_and_is_deterministic():
    flops = [100, 100, 40, 30, 30, 30, 10, 5]
    owners = assign_owners(flops, 2)
    assert owners == assign_owners(list(flops), 2)
    loads = [sum(f for f, o in zip(flops, owners, strict=True) if o == r) for r in range(2)]
    assert abs(loads[0] - loads[1]) <= max(flops[2:])  # LPT: imbalance below one non-top item
    assert assign_owners([7, 7, 7], 1) == [0, 0, 0]
    assert sorted(assign_owners([1] * 6, 3)) == [0, 0, 1, 1, 2, 2]


if __name__ == "__main__":
    if sys.argv[1] == "mismatch":
        _mismatch_worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    # Leave without interpreter teardown: torch 2.13's gloo can abort a finished rank there
    # ("terminate called without an active exception"); both ranks passed the barrier above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
