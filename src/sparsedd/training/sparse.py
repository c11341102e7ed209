"""Sparse execution of a masked fully connected network, equal to the dense-masked computation.

:class:`CompactMLP` holds only the unmasked weights (one value vector per layer, in the row-major
order of the mask's nonzeros) and computes with what remains alive:

* a hidden unit none of whose outgoing weights reach a live unit (or the output) is *dead*: it
  affects nothing, so it is not computed; its weights get exactly the zero gradient they get in the
  dense-masked network, and the optimizer still decays them the same way;
* an input feature (e.g. an always-black border pixel) that no live unit reads is dropped;
* a unit none of whose incoming weights come from a live unit is *constant* (``relu`` of its bias
  plus the weighted constants feeding it): it is computed once per step, not once per example, and
  enters the next layer as a bias term;
* each layer's live block is multiplied as a dense sub-matrix or, below a measured density, with a
  CSR sparse kernel (forward ``W @ x``, backward ``W^T @ g`` and the sampled product ``g x^T`` on the
  weights' pattern only).

Masked weights stay zero by construction (they are not represented). The same optimizer acts on the
value vectors, so SGD and Adam follow the dense-masked trajectory up to floating-point rounding
(sums are taken in another order). :meth:`CompactMLP.dense_state` and the optimizer-state
converters map back to the layout of :class:`sparsedd.models.mlp.MLP`.

:class:`SparsePolicy` decides when a stage runs compact: when its density is at most a crossover
measured on this machine (:func:`measure_crossover`, cached in the data cache folder).

(One module over 300 lines: the compact network, its autograd node and the measurement that decides
when to use it share the same private structure of live blocks.)
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SparseddError
from ..models.mlp import MLP
from ..pruning.mask import density
from .measured import cached, machine_key, sync


warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # the structure is built by this module, so the invariant checks would only cost time
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _csr_structure(rows: torch.Tensor, cols: torch.Tensor, n_out: int, n_in: int):
    """crow/col of the pattern (rows, cols sorted row-major), and of its transpose with the value permutation."""
    crow = torch.zeros(n_out + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_out), 0)
    order = torch.argsort(cols * n_out + rows)  # column-major order = row-major order of the transpose
    crow_t = torch.zeros(n_in + 1, dtype=torch.int64, device=rows.device)
    crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=n_in), 0)
    i32 = torch.int32  # the sparse kernels' native index type: int64 indices are converted at every call
    return crow.to(i32), cols.to(i32), crow_t.to(i32), rows[order].to(i32), order


class _Part:
    """The mask's entries of one weight inside a block (rows x cols): flat indices into the full
    weight and positions inside the block, both in row-major order."""

    def __init__(self, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        sub = mask[rows][:, cols]
        r, c = sub.nonzero(as_tuple=True)
        self.r, self.c = r, c
        self.shape = (int(rows.numel()), int(cols.numel()))
        self.full_index = rows[r] * mask.shape[1] + cols[c]
        self.pos = r * self.shape[1] + c
        self.full_block = int(r.numel()) == self.shape[0] * self.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.r.numel())

    @property
    def density(self) -> float:
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        if self.full_block:
            return values.view(self.shape)
        return values.new_zeros(self.shape[0] * self.shape[1]).index_put((self.pos,), values).view(self.shape)


# the parts of one layer, in this order, inside the one flat parameter
PARTS = ("main", "const_in", "const_out", "inert", "bias_live", "bias_const", "bias_inert")


class CompactMLP(nn.Module):
    """An :class:`MLP` state under a mask, computed on its live units only (see the module doc).

    Each layer's unmasked weights are split into four parts: the live block (live outputs x live
    inputs), constant inputs into live outputs, constant inputs into constant outputs, and the rest
    (``inert``: weights of dead units, which get a zero gradient but which the optimizer still decays
    as it would in the dense-masked network); biases are split the same way. All parts of all layers
    are one flat parameter, and forward and backward are written out in one autograd function, so a
    step costs a few dozen tensor operations whatever the architecture: at high sparsity the
    per-operation overhead, not arithmetic, is what a step costs.
    """

    def __init__(self, state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], kernel_below: float = 0.0):
        super().__init__()
        for n in mask:
            if not n.endswith(".weight"):
                raise SparseddError(f"sparse execution masks weights only, not {n}")
        depth = sum(1 for k in state if k.startswith("layers.") and k.endswith(".weight"))
        weights = [state[f"layers.{i}.weight"].detach() for i in range(depth)]
        device = weights[0].device
        masks = [mask[f"layers.{i}.weight"].to(device=device, dtype=torch.bool) if f"layers.{i}.weight" in mask
                 else torch.ones_like(weights[i], dtype=torch.bool) for i in range(depth)]
        self.depth = depth
        self.shapes = [tuple(w.shape) for w in weights]
        # which units matter: backwards from the outputs (all of which do)
        useful: list[torch.Tensor] = [torch.ones(self.shapes[-1][0], dtype=torch.bool, device=device)]
        for i in reversed(range(depth)):
            useful.insert(0, masks[i][useful[0]].any(0))
        # which are constant: forwards from the inputs (which never are); outputs are always computed
        const = [torch.zeros_like(useful[0])]
        for i in range(depth):
            c = useful[i + 1] & ~masks[i][:, useful[i] & ~const[i]].any(1)
            const.append(c if i + 1 < depth else torch.zeros_like(c))
        live = [u & ~c for u, c in zip(useful, const)]
        self.live_units = [int(v.sum()) for v in live]
        self.const_units = [int(v.sum()) for v in const]
        self.dead_units = [int((~u).sum()) for u in useful]
        self.all_inputs = bool(live[0].all())
        self.register_buffer("in_idx", live[0].nonzero().flatten(), persistent=False)
        self.index: list[dict[str, Any]] = []
        self.slices: list[dict[str, tuple[int, int]]] = []
        self.csr: list[Any] = []
        chunks, offset = [], 0
        for i in range(depth):
            idx = lambda v: v.nonzero().flatten()  # noqa: E731
            li, lo, ci, co = idx(live[i]), idx(live[i + 1]), idx(const[i]), idx(const[i + 1])
            main, cin, cout = _Part(masks[i], lo, li), _Part(masks[i], lo, ci), _Part(masks[i], co, ci)
            covered = torch.zeros(masks[i].numel(), dtype=torch.bool, device=device)
            for part in (main, cin, cout):
                covered[part.full_index] = True
            inert = (masks[i].flatten() & ~covered).nonzero().flatten()
            b_rest = idx(~(live[i + 1] | const[i + 1]))
            flat_w, bias = weights[i].flatten(), state[f"layers.{i}.bias"].detach()
            self.index.append({"main": main, "const_in": cin, "const_out": cout, "inert": inert,
                               "bias_live": lo, "bias_const": co, "bias_inert": b_rest})
            sl = {}
            for name, t in zip(PARTS, (flat_w[main.full_index], flat_w[cin.full_index], flat_w[cout.full_index],
                                       flat_w[inert], bias[lo], bias[co], bias[b_rest])):
                sl[name] = (offset, offset + t.numel())
                offset += t.numel()
                chunks.append(t)
            self.slices.append(sl)
            use_csr = main.nnz > 0 and main.density < kernel_below
            self.csr.append(_csr_structure(main.r, main.c, *main.shape) if use_csr else None)
        self.flat = nn.Parameter(torch.cat(chunks).clone())

    @property
    def kernels(self) -> list[str]:
        return ["csr" if c is not None else "dense" for c in self.csr]

    def part(self, t: torch.Tensor, i: int, name: str) -> torch.Tensor:
        a, b = self.slices[i][name]
        return t[a:b]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # activations are kept feature-major ([units, batch]): the CSR kernels are fastest that way
        h = x.flatten(1).t()
        h = h.contiguous() if self.all_inputs else h[self.in_idx]
        return _CompactFn.apply(h, self.flat, self).t().contiguous()  # argmax on a transposed view is slow

    # --- conversions to and from the MLP layout (parameter order w0, b0, w1, b1, ...)
    def _weight_indices(self, i: int) -> list[torch.Tensor]:
        ix = self.index[i]
        return [ix["main"].full_index, ix["const_in"].full_index, ix["const_out"].full_index, ix["inert"]]

    def _bias_indices(self, i: int) -> list[torch.Tensor]:
        ix = self.index[i]
        return [ix["bias_live"], ix["bias_const"], ix["bias_inert"]]

    def _to_full(self, i: int, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's weight and bias from a flat tensor (the parameter, its gradient, an optimizer buffer)."""
        w = t.new_zeros(self.shapes[i][0] * self.shapes[i][1])
        for name, j in zip(PARTS[:4], self._weight_indices(i)):
            w[j] = self.part(t, i, name)
        b = t.new_zeros(self.shapes[i][0])
        for name, j in zip(PARTS[4:], self._bias_indices(i)):
            b[j] = self.part(t, i, name)
        return w.view(self.shapes[i]), b

    def _from_full(self, tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The flat tensor from each layer's (weight, bias)."""
        out = []
        for i, (w, b) in enumerate(tensors):
            w, b = w.flatten().to(self.flat.device), b.to(self.flat.device)
            out += [w[j] for j in self._weight_indices(i)] + [b[j] for j in self._bias_indices(i)]
        return torch.cat(out)

    def dense_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(self.depth):
            out[f"layers.{i}.weight"], out[f"layers.{i}.bias"] = self._to_full(i, self.flat.detach())
        return out

    def optimizer_state_to_dense(self, opt_state: dict[str, Any]) -> dict[str, Any]:
        """A compact optimizer state in the layout of the MLP (zero state for masked weights)."""
        state = {}
        entry = opt_state["state"].get(0)
        if entry is not None:
            for i in range(self.depth):
                w_state, b_state = {}, {}
                for name, v in entry.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        w_state[name], b_state[name] = self._to_full(i, v)
                    else:
                        w_state[name] = b_state[name] = v.clone() if torch.is_tensor(v) else v
                state[2 * i], state[2 * i + 1] = w_state, b_state
        groups = [dict(g, params=list(range(2 * self.depth))) for g in opt_state["param_groups"]]
        return {"state": state, "param_groups": groups}

    def optimizer_state_from_dense(self, opt_state: dict[str, Any]) -> dict[str, Any]:
        entries = [opt_state["state"].get(j) for j in range(2 * self.depth)]
        state = {}
        if all(e is not None for e in entries):
            flat_entry = {}
            for name, v in entries[0].items():
                if torch.is_tensor(v) and v.dim() > 0:
                    flat_entry[name] = self._from_full([(entries[2 * i][name], entries[2 * i + 1][name])
                                                        for i in range(self.depth)])
                else:
                    flat_entry[name] = v.clone() if torch.is_tensor(v) else v
            state[0] = flat_entry
        groups = [dict(g, params=[0]) for g in opt_state["param_groups"]]
        return {"state": state, "param_groups": groups}


class _CompactFn(torch.autograd.Function):
    """Forward and backward of a :class:`CompactMLP` in one autograd node (activations [units, batch])."""

    @staticmethod
    def forward(ctx, h, flat, net: CompactMLP):
        acts, consts, pres, blocks = [h], [None], [None], []
        c = None
        for i in range(net.depth):
            ix = net.index[i]
            main = ix["main"]
            if net.csr[i] is not None:
                crow, col = net.csr[i][:2]
                z = torch.sparse.mm(_csr(crow, col, net.part(flat, i, "main"), main.shape), h)
                blocks.append(None)
            else:
                w = main.dense(net.part(flat, i, "main"))
                blocks.append(w)
                z = w @ h
            bias = net.part(flat, i, "bias_live")
            if c is not None and ix["const_in"].nnz:
                bias = bias + ix["const_in"].dense(net.part(flat, i, "const_in")) @ c
            z += bias.unsqueeze(1)
            c_next = pre = None
            if ix["bias_const"].numel():
                pre = net.part(flat, i, "bias_const")
                if c is not None and ix["const_out"].nnz:
                    pre = pre + ix["const_out"].dense(net.part(flat, i, "const_out")) @ c
                c_next = torch.relu(pre)
            h = torch.relu_(z) if i + 1 < net.depth else z
            acts.append(h)
            consts.append(c_next)
            pres.append(pre)
            c = c_next
        # not the output itself (acts[-1]): kept on ctx, it would make a reference cycle with this node
        ctx.net, ctx.acts, ctx.consts, ctx.pres, ctx.blocks = net, acts[:-1], consts, pres, blocks
        ctx.save_for_backward(flat)
        return h

    @staticmethod
    def backward(ctx, g):
        (flat,) = ctx.saved_tensors
        net, acts, consts, pres, blocks = ctx.net, ctx.acts, ctx.consts, ctx.pres, ctx.blocks
        grad = torch.zeros_like(flat)
        dz = g.contiguous()
        dc = None  # gradient of the constant units of the current layer's output
        for i in reversed(range(net.depth)):
            ix = net.index[i]
            main = ix["main"]
            h_in, c_in = acts[i], consts[i]
            s = dz.sum(1)
            net.part(grad, i, "bias_live").copy_(s)
            if net.csr[i] is not None:
                crow, col, crow_t, col_t, perm = net.csr[i]
                values = net.part(flat, i, "main")
                gv = torch.sparse.sampled_addmm(_csr(crow, col, values, main.shape), dz, h_in.t(), beta=0.0)
                net.part(grad, i, "main").copy_(gv.values())
            elif main.nnz:
                gw = dz @ h_in.t()
                net.part(grad, i, "main").copy_(gw.flatten() if main.full_block else gw.flatten()[main.pos])
            dc_in = None
            if c_in is not None and ix["const_in"].nnz:
                net.part(grad, i, "const_in").copy_(torch.outer(s, c_in).flatten()[ix["const_in"].pos])
                dc_in = ix["const_in"].dense(net.part(flat, i, "const_in")).t() @ s
            if dc is not None and pres[i + 1] is not None:
                dpre = dc * (pres[i + 1] > 0)
                net.part(grad, i, "bias_const").copy_(dpre)
                if c_in is not None and ix["const_out"].nnz:
                    net.part(grad, i, "const_out").copy_(torch.outer(dpre, c_in).flatten()[ix["const_out"].pos])
                    more = ix["const_out"].dense(net.part(flat, i, "const_out")).t() @ dpre
                    dc_in = more if dc_in is None else dc_in + more
            if i > 0:
                if net.csr[i] is not None:
                    crow, col, crow_t, col_t, perm = net.csr[i]
                    wt = _csr(crow_t, col_t, net.part(flat, i, "main")[perm], (main.shape[1], main.shape[0]))
                    dh = torch.sparse.mm(wt, dz)
                else:
                    dh = blocks[i].t() @ dz
                dz = dh.mul_(acts[i] > 0)
            dc = dc_in
        return None, grad, None


def compactable(model: nn.Module, mask: dict[str, torch.Tensor]) -> bool:
    return type(model) is MLP and all(n.endswith(".weight") for n in mask)


# --- when to run compact: crossovers measured on this machine ---------------------------------

@dataclass(frozen=True)
class SparsePolicy:
    """``mode``: ``auto`` (compact at densities <= the measured crossover), ``on`` (always), ``off``.

    ``crossover`` and ``kernel_below`` override the measurement (densities in [0, 1]).
    """

    mode: str = "auto"
    crossover: float | None = None
    kernel_below: float | None = None
    cache_dir: str | None = None

    def __post_init__(self):
        if self.mode not in ("auto", "on", "off"):
            raise SparseddError(f"unknown sparse mode {self.mode!r}; use auto, on or off")

    def decide(self, model: nn.Module, mask: dict[str, torch.Tensor], batch_size: int, precision: str) -> float | None:
        """The CSR kernel threshold to build a :class:`CompactMLP` with, or None for dense-masked execution."""
        if self.mode == "off" or not compactable(model, mask) or precision != "fp32" or not mask:
            return None
        device = next(model.parameters()).device
        if self.mode == "on":
            return self.kernel_below if self.kernel_below is not None else 0.3
        if device.type != "cpu" and self.crossover is None:
            # compact was nowhere faster on a GPU (H200, issue 4), and a captured step cannot use it; the
            # measurement is not made there: a fresh H100 spent 9.5 min before its first stage, in it or beside it
            return None
        widths = model.widths
        if self.crossover is not None and self.kernel_below is not None:
            cross = {"crossover": self.crossover, "kernel_below": self.kernel_below}
        else:
            cross = crossover_for(widths, batch_size, device, self.cache_dir)
        crossover = self.crossover if self.crossover is not None else cross["crossover"]
        kernel = self.kernel_below if self.kernel_below is not None else cross["kernel_below"]
        # the crossover was measured on masks without dead units; where units die (late levels of a
        # real run), what is left to compute is the live blocks, which can be far less than the density
        if crossover <= 0:  # compact execution was nowhere faster on this machine (e.g. on a GPU)
            return None
        # (the live blocks are found by building the compact network: only where the density alone does not decide)
        return kernel if density(mask) <= crossover or live_fraction(model, mask) <= crossover else None


def live_fraction(model: MLP, mask: dict[str, torch.Tensor]) -> float:
    """The share of the dense products a compact network still computes (its live blocks' area)."""
    c = CompactMLP(model.state_dict(), mask)
    area = sum(ix["main"].shape[0] * ix["main"].shape[1] for ix in c.index)
    return area / sum(a * b for a, b in c.shapes)


def crossover_for(widths: tuple[int, ...], batch_size: int, device: torch.device, cache_dir: str | None = None,
                  remeasure: bool = False) -> dict[str, float]:
    """The measured crossovers of this architecture, batch size, device and thread count (cached)."""
    key = machine_key(device, f"v{IMPLEMENTATION}", "-".join(map(str, widths)), f"b{batch_size}")
    return cached("crossover", key, lambda: measure_crossover(widths, batch_size, device), cache_dir, remeasure)


DENSITIES = tuple(0.8 ** k for k in range(0, 25, 2))
IMPLEMENTATION = 2  # part of the cache key: a faster or slower compact implementation moves the crossover


def _step_time(net: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
               masked: list[tuple[torch.Tensor, torch.Tensor]] = ()) -> float:
    opt = torch.optim.SGD(params, lr=0.01)

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if masked:
            torch._foreach_mul_([p.grad for p, _ in masked], [m for _, m in masked])
        opt.step()
        if masked:
            with torch.no_grad():
                torch._foreach_mul_([p for p, _ in masked], [m for _, m in masked])

    for _ in range(2):
        step()
    sync(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(x.device)
    return (time.perf_counter() - t0) / steps


def measure_crossover(widths: tuple[int, ...], batch_size: int, device: torch.device | str = "cpu",
                      steps: int = 10) -> dict[str, Any]:
    """Time training steps of the dense-masked network and of :class:`CompactMLP` (dense blocks, and
    CSR kernels) at densities 0.8^k; return the largest density where compact wins (``crossover``)
    and the largest block density where CSR beats dense blocks (``kernel_below``)."""
    from ..pruning import magnitude

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    model = MLP(widths[0], tuple(widths[1:-1]), widths[-1]).to(device)
    x = torch.randn(batch_size, widths[0], generator=g).to(device)
    y = torch.randint(0, widths[-1], (batch_size,), generator=g).to(device)
    names = model.prunable_names("default")
    weights = {n: p.detach().cpu() for n, p in model.named_parameters() if n in names}
    rows = []
    for d in DENSITIES:
        full = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        mask = magnitude(weights, full, fraction=1 - d, scope="layer") if d < 1 else full
        mask = {n: m.to(device) for n, m in mask.items()}
        params = dict(model.named_parameters())
        masked = [(params[n], mask[n].float()) for n in names]
        dense = _step_time(model, list(model.parameters()), x, y, steps, masked)
        state = model.state_dict()
        blocks = CompactMLP(state, mask, kernel_below=0.0)
        csr = CompactMLP(state, mask, kernel_below=1.01)
        rows.append({"density": d, "dense_masked_s": dense,
                     "compact_dense_s": _step_time(blocks, list(blocks.parameters()), x, y, steps),
                     "compact_csr_s": _step_time(csr, list(csr.parameters()), x, y, steps)})
    return {**crossovers(rows), "points": rows}


def crossovers(rows: list[dict[str, float]], margin: float = 0.9) -> dict[str, float]:
    """From timed points: ``kernel_below``, the block density under which CSR kernels are used (the
    largest density from which CSR wins at every lower density), and ``crossover``, the largest
    density from which compact execution wins at every lower density, by at least ``margin``."""
    rows = sorted(rows, key=lambda r: r["density"])
    kernel = 0.0
    for r in rows:
        if r["compact_csr_s"] >= r["compact_dense_s"]:
            break
        kernel = r["density"]
    kernel_below = kernel * 1.0001  # so that the winning point itself qualifies
    cross = 0.0
    for r in rows:
        best = min(r["compact_dense_s"], r["compact_csr_s"]) if r["density"] < kernel_below else r["compact_dense_s"]
        if best >= margin * r["dense_masked_s"]:
            break
        cross = r["density"]
    return {"crossover": cross, "kernel_below": kernel_below}
