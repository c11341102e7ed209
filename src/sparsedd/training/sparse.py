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

import functools
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SparseddError
from ..models.mlp import MLP
from ..rng import global_rng_kept
from ..pruning.mask import density
from .measured import cached, interleaved_medians, machine_key, sync, threads
from .optim import direct_step


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
    """The mask's entries of one weight inside a block (rows x cols), stored either as the whole block
    (``block``: every position, the masked ones held at zero; products are plain dense products) or as
    the unmasked values only (for the CSR kernels). ``full_index``: each stored entry's flat index into
    the full weight; ``live``: which stored entries are unmasked (all of them for a value vector)."""

    def __init__(self, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, block: bool):
        sub = mask[rows][:, cols]
        self.shape = (int(rows.numel()), int(cols.numel()))
        self.block = block
        self.nnz = int(sub.sum())
        if block:
            r = torch.arange(self.shape[0], device=mask.device).repeat_interleave(self.shape[1])
            c = torch.arange(self.shape[1], device=mask.device).repeat(self.shape[0])
            self.live = sub.flatten()
        else:
            r, c = sub.nonzero(as_tuple=True)
            self.live = torch.ones(r.numel(), dtype=torch.bool, device=mask.device)
        self.r, self.c = r, c  # block coordinates of each stored entry, row-major
        self.full_index = rows[r] * mask.shape[1] + cols[c]

    @property
    def size(self) -> int:
        return int(self.full_index.numel())

    @property
    def density(self) -> float:
        area = self.shape[0] * self.shape[1]
        return self.nnz / area if area else 0.0


# A live block smaller than this (outputs x inputs) is multiplied dense whatever its density: a small
# dense product beats the CSR kernels' fixed costs. In a one-off timing of LeNet-300-100 levels (1
# thread, batch 128), CSR won on blocks of 294x676 and 262x399 at 5% and 3% density and dense won on
# 185x256 and smaller. The crossover measurement times full-size blocks only, hence this floor.
# (It decides a compact checkpoint's layout: a change of it is a change of LAYOUT.)
CSR_MIN_AREA = 2 ** 16

# the parts of one layer, in this order, inside the one flat parameter
PARTS = ("main", "const_in", "const_out", "inert", "bias_live", "bias_const", "bias_inert")
LAYOUT = 3  # the flat parameter's layout, saved with a compact stage's checkpoints (2: values only, no blocks)


def _units(masks: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per layer boundary (inputs, hidden layers, outputs): which units matter (``useful``: they reach an
    output), which of those are constant (no live input) and which are live (useful, not constant)."""
    depth = len(masks)
    # which units matter: backwards from the outputs (all of which do)
    useful: list[torch.Tensor] = [torch.ones(masks[-1].shape[0], dtype=torch.bool, device=masks[-1].device)]
    for i in reversed(range(depth)):
        useful.insert(0, masks[i][useful[0]].any(0))
    # which are constant: forwards from the inputs (which never are); outputs are always computed
    const = [torch.zeros_like(useful[0])]
    for i in range(depth):
        c = useful[i + 1] & ~masks[i][:, useful[i] & ~const[i]].any(1)
        const.append(c if i + 1 < depth else torch.zeros_like(c))
    live = [u & ~c for u, c in zip(useful, const)]
    return useful, const, live


class CompactMLP(nn.Module):
    """An :class:`MLP` state under a mask, computed on its live units only (see the module doc).

    Each layer's unmasked weights are split into four parts: the live block (live outputs x live
    inputs), constant inputs into live outputs, constant inputs into constant outputs, and the rest
    (``inert``: weights of dead units, which get a zero gradient but which the optimizer still decays
    as it would in the dense-masked network); biases are split the same way. The blocks are stored
    whole (masked positions at zero, their gradient masked in the backward pass, so that they stay
    zero), except a live block under the CSR threshold, stored as its values. All parts of all layers
    are one flat parameter, and forward and backward are written out in one autograd function, so a
    step costs a few tensor operations per layer: at high sparsity the per-operation overhead, not
    arithmetic, is what a step costs.
    """

    def __init__(self, state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], kernel_below: float = 0.0,
                 csr_min_area: int | None = None):
        super().__init__()
        csr_min_area = CSR_MIN_AREA if csr_min_area is None else csr_min_area
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
        useful, const, live = _units(masks)
        self.live_units = [int(v.sum()) for v in live]
        self.const_units = [int(v.sum()) for v in const]
        self.dead_units = [int((~u).sum()) for u in useful]
        self.all_inputs = bool(live[0].all())
        self.register_buffer("in_idx", live[0].nonzero().flatten(), persistent=False)
        self.index: list[dict[str, Any]] = []
        self.slices: list[dict[str, tuple[int, int]]] = []
        self.csr: list[Any] = []
        chunks, lives, offset = [], [], 0
        for i in range(depth):
            idx = lambda v: v.nonzero().flatten()  # noqa: E731
            li, lo, ci, co = idx(live[i]), idx(live[i + 1]), idx(const[i]), idx(const[i + 1])
            sub = masks[i][lo][:, li]
            area = int(sub.numel())
            use_csr = area >= csr_min_area and int(sub.sum()) > 0 and int(sub.sum()) / area < kernel_below
            main = _Part(masks[i], lo, li, block=not use_csr)
            cin, cout = _Part(masks[i], lo, ci, block=True), _Part(masks[i], co, ci, block=True)
            covered = torch.zeros(masks[i].numel(), dtype=torch.bool, device=device)
            for part in (main, cin, cout):
                covered[part.full_index] = True
            inert = (masks[i].flatten() & ~covered).nonzero().flatten()
            b_rest = idx(~(live[i + 1] | const[i + 1]))
            flat_w, bias = weights[i].flatten(), state[f"layers.{i}.bias"].detach()
            self.index.append({"main": main, "const_in": cin, "const_out": cout, "inert": inert,
                               "bias_live": lo, "bias_const": co, "bias_inert": b_rest})
            sl = {}
            ones = lambda n: torch.ones(n, dtype=torch.bool, device=device)  # noqa: E731
            for name, t, alive in zip(PARTS, (flat_w[main.full_index], flat_w[cin.full_index], flat_w[cout.full_index],
                                              flat_w[inert], bias[lo], bias[co], bias[b_rest]),
                                      (main.live, cin.live, cout.live, ones(inert.numel()), ones(lo.numel()),
                                       ones(co.numel()), ones(b_rest.numel()))):
                sl[name] = (offset, offset + t.numel())
                offset += t.numel()
                chunks.append(t)
                lives.append(alive)
            self.slices.append(sl)
            self.csr.append(_csr_structure(main.r, main.c, *main.shape) if use_csr else None)
        alive = torch.cat(lives)
        # the masked positions inside stored blocks: zero, and their gradient masked (None where there are none)
        self.grad_mask = None if bool(alive.all()) else alive.to(weights[0].dtype)
        flat = torch.cat(chunks)
        self.flat = nn.Parameter(flat * self.grad_mask if self.grad_mask is not None else flat.clone())

        self._views: _Views | None = None
        self._grad: _Views | None = None

    def views_of(self, flat: torch.Tensor) -> "_Views":
        """The parameter's parts as views (remade only if its storage moved, e.g. by ``.to``)."""
        if self._views is None or self._views.ptr != flat.data_ptr():
            with torch.inference_mode(False):  # plain views, usable by the autograd path too
                self._views = _Views(self, flat.detach())
        return self._views

    def grad_views(self) -> "_Views":
        if self._grad is None or self._grad.flat.shape != self.flat.shape or self._grad.flat.device != self.flat.device:
            with torch.inference_mode(False):  # a plain tensor: the optimizer reads it outside inference mode
                buf = torch.zeros_like(self.flat, requires_grad=False).detach()
                self._grad = _Views(self, buf)
            self._grad.flat = buf
        return self._grad

    @property
    def kernels(self) -> list[str]:
        return ["csr" if c is not None else "dense" for c in self.csr]

    def part(self, t: torch.Tensor, i: int, name: str) -> torch.Tensor:
        a, b = self.slices[i][name]
        return t[a:b]

    def live_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The inputs the network reads, [N, live inputs]: select them once for a whole data set, then
        call the network on rows of it with ``selected=True`` (a view where it reads every input)."""
        x = x.flatten(1)
        return x if self.all_inputs else x.index_select(1, self.in_idx)

    def _live_t(self, x: torch.Tensor, selected: bool) -> torch.Tensor:
        """The live inputs feature-major ([units, batch]): the CSR kernels are fastest that way, and a
        transposed view costs the dense products nothing (the output is batch-major, [batch, classes])."""
        h = x.t() if selected else x.flatten(1).t()
        return h if selected or self.all_inputs else h[self.in_idx]

    def forward(self, x: torch.Tensor, selected: bool = False) -> torch.Tensor:
        return _CompactFn.apply(self._live_t(x, selected), self.flat, self)

    @torch.inference_mode()
    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, selected: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean cross-entropy on ``(x, y)`` and the logits, with the parameter's gradient set, without
        autograd: at high sparsity its graph and engine cost about as much as the products themselves.
        (In inference mode, which skips the version counters and view records ``no_grad`` keeps: 535 us
        against 644 per call at 98.8% sparsity, benchmarks/compact_step_parts.py. The loss and logits it
        returns are read, never modified.)"""
        out, saved = _forward(self, self._live_t(x, selected), self.flat)
        logp = torch.log_softmax(out, 1)
        loss = F.nll_loss(logp, y)
        g = logp.exp_()  # d loss / d out = (softmax - one hot) / batch
        g.scatter_add_(1, y.unsqueeze(1), g.new_full((y.shape[0], 1), -1.0)).div_(y.shape[0])
        self.flat.grad = _backward(self, self.flat, saved, g)
        return loss, out

    @property
    def step_products(self) -> int:
        """Multiply-adds per example of the live blocks' forward product (the work a step grows with)."""
        return sum(ix["main"].nnz if c is not None else ix["main"].size for ix, c in zip(self.index, self.csr))

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
        """The flat tensor from each layer's (weight, bias); masked positions of stored blocks at zero."""
        out = []
        for i, (w, b) in enumerate(tensors):
            w, b = w.flatten().to(self.flat.device), b.to(self.flat.device)
            out += [w[j] for j in self._weight_indices(i)] + [b[j] for j in self._bias_indices(i)]
        flat = torch.cat(out)
        return flat * self.grad_mask if self.grad_mask is not None else flat

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
        """The MLP-layout optimizer state in the flat layout; masked weights' state is dropped (set to
        zero inside stored blocks), as their weights are: a masked weight's momentum moves nothing in
        the dense-masked network, whose weights are masked again after every step."""
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


def _relu_grad(grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """relu's backward in one operation (``act``: relu's input or output)."""
    return torch.ops.aten.threshold_backward.default(grad, act, 0)


def _relu_grad_into(grad: torch.Tensor, act: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward.grad_input(grad, act, 0, grad_input=out)


class _Views:
    """Each layer's parts of one flat tensor as views, blocks in their shapes (made once per tensor: a
    step then spends no operations on slicing)."""

    def __init__(self, net: "CompactMLP", t: torch.Tensor):
        self.ptr = t.data_ptr()
        self.layers = []
        for i, ix in enumerate(net.index):
            v = {name: net.part(t, i, name) for name in PARTS}
            for name in ("main", "const_in", "const_out"):
                if ix[name].block:
                    v[name] = v[name].view(ix[name].shape)
            v["bias_live_col"] = v["bias_live"].unsqueeze(1)
            self.layers.append(v)


def _forward(net: "CompactMLP", h: torch.Tensor, flat: torch.Tensor):
    """The output [batch, classes] from the live inputs ``h`` [units, batch], and what the backward
    pass reads: each layer's input activations, constant units and their pre-activations."""
    w = net.views_of(flat)
    acts, consts, pres = [h], [None], [None]
    c = None
    for i, (ix, v, csr) in enumerate(zip(net.index, w.layers, net.csr)):
        bias = v["bias_live_col"]
        if c is not None and ix["const_in"].nnz:
            bias = torch.addmv(v["bias_live"], v["const_in"], c).unsqueeze(1)
        last = i + 1 == net.depth
        if csr is not None:
            z = torch.sparse.mm(_csr(csr[0], csr[1], v["main"], ix["main"].shape), h.contiguous())
            z += bias
        else:
            # the output too feature-major: MKL took 98.8 us for the batch-major 128x98x10 product (transposed
            # operands, 10 columns) and 7.6 us for this one (LeNet at 98.8%, one thread;
            # benchmarks/compact_step_parts.py)
            z = torch.addmm(bias, v["main"], h)
        if last:  # batch-major for the loss, whose gradient, transposed, the backward products read fastest
            z = z.t().contiguous()
        c_next = pre = None
        if ix["bias_const"].numel():
            pre = v["bias_const"]
            if c is not None and ix["const_out"].nnz:
                pre = torch.addmv(pre, v["const_out"], c)
            c_next = torch.relu(pre)
        h = z if last else torch.relu_(z)
        acts.append(h)
        consts.append(c_next)
        pres.append(pre)
        c = c_next
    return h, (acts[:-1], consts, pres)


def _backward(net: "CompactMLP", flat: torch.Tensor, saved, g: torch.Tensor) -> torch.Tensor:
    """The gradient of the flat parameter from the output's gradient ``g`` [batch, classes], written into
    the one buffer the network keeps: every part a step writes is written whole at every step, and
    the others stay zero."""
    acts, consts, pres = saved
    w, gv = net.views_of(flat), net.grad_views()
    # the output's gradient, feature-major: a view of the batch-major one, which the products read fastest
    # (a contiguous feature-major gradient made this pass 386 us against 324; benchmarks/compact_step_parts.py)
    dz = g.t()
    if net.csr[-1] is not None:
        dz = dz.contiguous()
    dc = None  # gradient of the constant units of the current layer's output
    for i in reversed(range(net.depth)):
        ix, v, out, csr = net.index[i], w.layers[i], gv.layers[i], net.csr[i]
        h_in, c_in = acts[i], consts[i]
        s = torch.sum(dz, 1, out=out["bias_live"])
        if csr is not None:
            sampled = torch.sparse.sampled_addmm(_csr(csr[0], csr[1], v["main"], ix["main"].shape), dz, h_in.t(),
                                                 beta=0.0)
            out["main"].copy_(sampled.values())
        elif ix["main"].nnz:
            torch.mm(dz, h_in.t(), out=out["main"])
        dc_in = None
        if c_in is not None and ix["const_in"].nnz:
            torch.outer(s, c_in, out=out["const_in"])
            dc_in = torch.mv(v["const_in"].t(), s)
        if dc is not None and pres[i + 1] is not None:
            dpre = _relu_grad_into(dc, pres[i + 1], out["bias_const"])
            if c_in is not None and ix["const_out"].nnz:
                torch.outer(dpre, c_in, out=out["const_out"])
                more = torch.mv(v["const_out"].t(), dpre)
                dc_in = more if dc_in is None else dc_in.add_(more)
        if i > 0:
            if csr is not None:
                crow_t, col_t, perm = csr[2:]
                wt = _csr(crow_t, col_t, v["main"][perm], (ix["main"].shape[1], ix["main"].shape[0]))
                dh = torch.sparse.mm(wt, dz)
            else:
                dh = v["main"].t() @ dz
            dz = _relu_grad(dh, acts[i])
        dc = dc_in
    if net.grad_mask is not None:  # the masked positions inside stored blocks stay at zero
        gv.flat.mul_(net.grad_mask)
    return gv.flat


class _CompactFn(torch.autograd.Function):
    """:func:`_forward` and :func:`_backward` as one autograd node (autograd copies the gradient into ``.grad``)."""

    @staticmethod
    def forward(ctx, h, flat, net: CompactMLP):
        out, saved = _forward(net, h, flat)
        # not the output itself: kept on ctx, it would make a reference cycle with this node
        ctx.net, ctx.saved = net, saved
        ctx.save_for_backward(flat)
        return out

    @staticmethod
    def backward(ctx, g):
        (flat,) = ctx.saved_tensors
        return None, _backward(ctx.net, flat, ctx.saved, g), None


# Below this many multiply-adds per step, a compact step runs on one thread: its products are too small
# to share out, and each of its many small parallel regions would wait on the slowest thread (in a
# one-off timing with another process busy on one of 2 cores, 2 threads made a 98.8%-sparse LeNet step
# 4x slower, and 1 thread left it as fast as on a quiet machine; docs/performance.md).
ONE_THREAD_BELOW = 2 ** 25


def compact_threads(compact, batch_size: int) -> int | None:
    """The thread count a compact network's steps run on (None: the process's own)."""
    return 1 if compact.step_products * batch_size < ONE_THREAD_BELOW else None


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
    return cached("crossover", key, lambda: measure_crossover(widths, batch_size, device), cache_dir, remeasure,
                  {"crossover": (int, float), "kernel_below": (int, float)})


DENSITIES = tuple(0.8 ** k for k in range(0, 25, 2))
IMPLEMENTATION = 5  # part of the cache key: a faster or slower compact implementation moves the crossover


def _stepper(net: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             masked: list[tuple[torch.Tensor, torch.Tensor]] = ()) -> Callable[[], None]:
    """One training step as the trainer takes it (a compact network's without autograd)."""
    opt = torch.optim.SGD(params, lr=0.01, fused=True)  # as the trainers build it (optim._impl)

    if isinstance(net, CompactMLP):
        opt_step = direct_step(opt)

        def compact_step():
            net.loss_and_grad(x, y)
            opt_step()

        return compact_step

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

    return step


def _seconds_per_step(step: Callable[[], None], steps: int, device: torch.device, count: int | None) -> float:
    with threads(count):
        step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
    return (time.perf_counter() - t0) / steps


def measure_crossover(widths: tuple[int, ...], batch_size: int, device: torch.device | str = "cpu",
                      steps: int = 8, rounds: int = 3) -> dict[str, Any]:
    """Time training steps of the dense-masked network and of :class:`CompactMLP` (dense blocks, and
    CSR kernels, each on the threads it trains with) at densities 0.8^k; return the largest density
    where compact wins (``crossover``) and the largest block density where CSR beats dense blocks
    (``kernel_below``).

    The three take turns, ``rounds`` times, and each one's median is kept (:func:`.measured.interleaved_medians`)."""
    from ..pruning import magnitude

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    with global_rng_kept():
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
        state = model.state_dict()
        blocks = CompactMLP(state, mask, kernel_below=0.0)
        csr = CompactMLP(state, mask, kernel_below=1.01, csr_min_area=0)
        variants = {
            "dense_masked_s": (_stepper(model, list(model.parameters()), x, y,
                                        [(params[n], mask[n].float()) for n in names]), None),
            "compact_dense_s": (_stepper(blocks, list(blocks.parameters()), x, y), compact_threads(blocks, batch_size)),
            "compact_csr_s": (_stepper(csr, list(csr.parameters()), x, y), compact_threads(csr, batch_size)),
        }
        timers = {k: functools.partial(_seconds_per_step, step, steps, device, count)
                  for k, (step, count) in variants.items()}
        rows.append({"density": d, **interleaved_medians(timers, rounds)})
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
