"""afford-motion's contact encoder: the Point Transformer `SceneMapEncoder`, in pure PyTorch.

afford-motion encodes the contact map (B, N, 3 + C) with four Point Transformer stages
`enc1`..`enc4` (planes 32, 64, 128, 256; strides 1, 4, 4, 4; neighbours 8, 16, 16, 16), giving
N/64 tokens of width 256 (8192 points -> 128 tokens). Module and parameter names are theirs, so
their state dicts load. Their point operations run in the CUDA-only `pointops` extension
(github POSTECH-CVLab/point-transformer, lib/pointops/src); the ones below are batched torch
versions that return, per sample, exactly what those kernels return on that sample:

  farthest_point_sample  starts at the sample's point 0; the kernel keeps min squared distances
                         to the chosen set and takes the maximum with a 1024-thread (at most)
                         block: each thread scans points tid, tid + T, ... keeping the first
                         maximum it sees, then a tree reduction keeps the lower slot on equal
                         values. Among equal maxima the winner is therefore the point whose
                         thread id has the smallest bit-reversed value, then the smallest index.
  knn_query              a max-heap of k entries per query initialised to (1e10, point 0),
                         points scanned in order, replaced only when strictly closer, then heap
                         sorted. The query point itself is its own neighbour (distance 0). The
                         kept set and the order among equal distances follow the heap; rows
                         without equal distances among their k + 1 nearest are answered by
                         top-k (the same result), the others by an exact vectorised heap.
Distances are ((dx*dx + dy*dy) + dz*dz) in float32 in that order, as the kernels write them
(an nvcc build may fuse multiply-adds, which can move a near-tie by one ulp; exact ties, such
as duplicated points, are unaffected). Distance blocks are chunked so that memory stays
bounded (no N x N matrix per sample is held at once).
"""

import math

import torch
import torch.nn as nn

STRIDES = (1, 4, 4, 4)
NSAMPLES = (8, 16, 16, 16)
SHARE_PLANES = 8
DIST_CHUNK_ELEMENTS = 1 << 22        # distance entries computed at once (16 MB in float32)
HEAP_INIT = 1e10                     # the kernel's empty-slot distance


# --------------------------------------------------------------------------------------------
# point operations
# --------------------------------------------------------------------------------------------

def square_distances(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(B, m, 3), (B, n, 3) -> (B, m, n) squared distances in the kernels' order of operations."""
    dx = q[:, :, None, 0] - p[:, None, :, 0]
    dy = q[:, :, None, 1] - p[:, None, :, 1]
    dz = q[:, :, None, 2] - p[:, None, :, 2]
    return (dx * dx + dy * dy) + dz * dz


def fps_block_size(n: int) -> int:
    """Threads of the sampling kernel's block for n points (pointops' opt_n_threads)."""
    return max(min(1 << int(math.log(float(n)) / math.log(2.0)), 1024), 1)


def fps_tie_rank(n: int, device=None) -> torch.Tensor:
    """(n,) rank of each point among equal maxima in the sampling kernel (lower wins)."""
    threads = fps_block_size(n)
    bits = threads.bit_length() - 1
    k = torch.arange(n, device=device)
    tid = k % threads
    rev = torch.zeros_like(tid)
    for b in range(bits):
        rev |= ((tid >> b) & 1) << (bits - 1 - b)
    return rev * ((n + threads - 1) // threads) + k // threads


@torch.no_grad()
def farthest_point_sample(p: torch.Tensor, m: int) -> torch.Tensor:
    """(B, n, 3) points -> (B, m) indices of pointops' furthestsampling, per sample."""
    B, n, _ = p.shape
    rank = fps_tie_rank(n, p.device).expand(B, n)
    never = torch.full_like(rank, n * 2)
    nearest = torch.full((B, n), HEAP_INIT, dtype=p.dtype, device=p.device)
    idx = torch.zeros(B, m, dtype=torch.long, device=p.device)
    rows = torch.arange(B, device=p.device)
    old = torch.zeros(B, dtype=torch.long, device=p.device)
    for j in range(1, m):
        d = square_distances(p[rows, old][:, None], p)[:, 0]                  # (B, n)
        nearest = torch.minimum(d, nearest)
        top = nearest.max(-1, keepdim=True).values
        old = torch.where(nearest == top, rank, never).argmin(-1)
        idx[:, j] = old
    return idx


def _sift_down(dist, idx, active, size):
    """The kernel's reheap on rows where `active`, heaps of `size` entries (in place)."""
    R = dist.shape[0]
    rows = torch.arange(R, device=dist.device)
    root = torch.zeros(R, dtype=torch.long, device=dist.device)
    active = active.clone()
    while True:
        child = 2 * root + 1
        active &= child < size
        if not active.any():
            return
        c = child.clamp(max=size - 1)
        c1 = (child + 1).clamp(max=size - 1)
        right = (child + 1 < size) & (dist[rows, c1] > dist[rows, c])
        c = torch.where(right, c1, c)
        active &= ~(dist[rows, root] > dist[rows, c])
        r, ch = rows[active], c[active]
        rt = root[active]
        dr, dc = dist[r, rt].clone(), dist[r, ch].clone()
        dist[r, rt], dist[r, ch] = dc, dr
        ir, ic = idx[r, rt].clone(), idx[r, ch].clone()
        idx[r, rt], idx[r, ch] = ic, ir
        root = torch.where(active, c, root)


def heap_knn(d: torch.Tensor, k: int, chunk: int = 64):
    """Exact heap k-NN of the kernel on distance rows d (R, n) -> idx (R, k), dist2 (R, k).

    The heap's maximum only falls, so a point not closer than the maximum at the start of its
    chunk can never enter; only the rest are replayed one by one, in order.
    """
    R, n = d.shape
    rows = torch.arange(R, device=d.device)
    dist = torch.full((R, k), HEAP_INIT, dtype=d.dtype, device=d.device)
    idx = torch.zeros(R, k, dtype=torch.long, device=d.device)
    start = 0
    while start < n:
        size = k if start == 0 else max(chunk, start)           # chunks double: insertions thin out
        block = d[:, start:start + size]
        alive = block < dist[:, :1]
        rank = alive.cumsum(1) - 1                                            # survivors packed, in order
        steps = int(rank[:, -1].max()) + 1
        order = torch.zeros(R, steps + 1, dtype=torch.long, device=d.device)
        order.scatter_(1, torch.where(alive, rank, steps), torch.arange(block.shape[1], device=d.device).expand(R, -1))
        count = rank[:, -1] + 1
        for s in range(steps):
            col = order[:, s]
            v = block[rows, col]
            take = (s < count) & (v < dist[:, 0])
            dist[:, 0] = torch.where(take, v, dist[:, 0])
            idx[:, 0] = torch.where(take, col + start, idx[:, 0])
            _sift_down(dist, idx, take, k)
        start += size
    everyone = torch.ones(R, dtype=torch.bool, device=d.device)
    for i in range(k - 1, 0, -1):                                            # the kernel's heap_sort
        d0, di = dist[:, 0].clone(), dist[:, i].clone()
        dist[:, 0], dist[:, i] = di, d0
        i0, ii = idx[:, 0].clone(), idx[:, i].clone()
        idx[:, 0], idx[:, i] = ii, i0
        _sift_down(dist, idx, everyone, i)
    return idx, dist


@torch.no_grad()
def knn_query(p: torch.Tensor, q: torch.Tensor, k: int, exact_order: bool = True):
    """(B, n, 3) points, (B, m, 3) queries -> (B, m, k) indices, (B, m, k) squared distances,
    as pointops' knnquery gives per sample (ascending; a query in p finds itself).

    exact_order=False still returns the kernel's neighbour *set*, but may order equal distances
    inside it differently (only rows with a tie at the k-th distance replay the heap): enough for
    the encoder, which pools neighbours symmetrically (max, softmax-weighted sum, BatchNorm)."""
    B, n, _ = p.shape
    m = q.shape[1]
    idx = torch.zeros(B, m, k, dtype=torch.long, device=p.device)
    dist2 = torch.full((B, m, k), HEAP_INIT, dtype=p.dtype, device=p.device)
    step = max(1, DIST_CHUNK_ELEMENTS // max(1, B * n))
    kk = min(k + 1, n)
    for s in range(0, m, step):
        d = square_distances(q[:, s:s + step], p)                             # (B, mc, n)
        vals, ids = d.topk(kk, dim=-1, largest=False, sorted=True)
        if exact_order:
            tied = (vals[..., 1:] == vals[..., :-1]).any(-1)                  # (B, mc)
        else:
            tied = (vals[..., 1:] == vals[..., :-1])[..., k - 1:].any(-1) if n > k else \
                torch.zeros(vals.shape[:2], dtype=torch.bool, device=p.device)
        take = min(k, n)
        idx[:, s:s + step, :take] = ids[..., :take]
        dist2[:, s:s + step, :take] = vals[..., :take]
        if tied.any():
            flat = d[tied]                                                    # (R, n)
            hi, hd = heap_knn(flat, k)
            sub_i, sub_d = idx[:, s:s + step], dist2[:, s:s + step]
            sub_i[tied], sub_d[tied] = hi, hd
    return idx, dist2


def group(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """values (B, n, C), idx (B, m, k) -> (B, m, k, C)."""
    B, m, k = idx.shape
    C = values.shape[-1]
    return values.gather(1, idx.reshape(B, m * k, 1).expand(-1, -1, C)).reshape(B, m, k, C)


@torch.no_grad()
def neighbourhoods(p: torch.Tensor) -> list:
    """Per stage: (points (B, n_s, 3), sampled indices or None, down-sampling kNN or None,
    self kNN (B, n_s, k)). Depends only on xyz, so it can be computed once per scene."""
    stages, cur = [], p
    for stride, k in zip(STRIDES, NSAMPLES):
        sample = down = None
        if stride != 1:
            sample = farthest_point_sample(cur, cur.shape[1] // stride)
            new = cur.gather(1, sample[..., None].expand(-1, -1, 3))
            down = knn_query(cur, new, k, exact_order=False)[0]
            cur = new
        stages.append((cur, sample, down, knn_query(cur, cur, k, exact_order=False)[0]))
    return stages


# --------------------------------------------------------------------------------------------
# layers (afford-motion's names; points batched as (B, n, C))
# --------------------------------------------------------------------------------------------

def batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over every point (and neighbour) of the batch, as on their concatenated points."""
    return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class PointTransformerLayer(nn.Module):
    def __init__(self, in_planes, out_planes, share_planes=8, nsample=16):
        super().__init__()
        self.mid_planes = mid = out_planes
        self.out_planes, self.share_planes, self.nsample = out_planes, share_planes, nsample
        self.linear_q = nn.Linear(in_planes, mid)
        self.linear_k = nn.Linear(in_planes, mid)
        self.linear_v = nn.Linear(in_planes, out_planes)
        self.linear_p = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU(inplace=True),
                                      nn.Linear(3, out_planes))
        self.linear_w = nn.Sequential(nn.BatchNorm1d(mid), nn.ReLU(inplace=True),
                                      nn.Linear(mid, mid // share_planes),
                                      nn.BatchNorm1d(mid // share_planes), nn.ReLU(inplace=True),
                                      nn.Linear(out_planes // share_planes, out_planes // share_planes))

    def forward(self, p, x, idx):
        """p (B, n, 3), x (B, n, C), idx (B, n, k) self-neighbours -> (B, n, out_planes)."""
        x_q, x_k, x_v = self.linear_q(x), group(self.linear_k(x), idx), group(self.linear_v(x), idx)
        p_r = group(p, idx) - p[:, :, None]                                   # (B, n, k, 3)
        for i, layer in enumerate(self.linear_p):
            p_r = batch_norm(layer, p_r) if i == 1 else layer(p_r)
        w = x_k - x_q[:, :, None] + p_r
        for i, layer in enumerate(self.linear_w):
            w = batch_norm(layer, w) if i % 3 == 0 else layer(w)
        w = w.softmax(dim=2)                                                  # over neighbours
        B, n, k, c = x_v.shape
        s = self.share_planes
        return ((x_v + p_r).view(B, n, k, s, c // s) * w[:, :, :, None]).sum(2).reshape(B, n, c)


class TransitionDown(nn.Module):
    def __init__(self, in_planes, out_planes, stride=1, nsample=16):
        super().__init__()
        self.stride, self.nsample = stride, nsample
        self.linear = nn.Linear(3 + in_planes if stride != 1 else in_planes, out_planes, bias=False)
        self.bn = nn.BatchNorm1d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, p, x, new_p=None, down_idx=None):
        if self.stride == 1:
            return self.relu(batch_norm(self.bn, self.linear(x)))
        grouped = torch.cat([group(p, down_idx) - new_p[:, :, None], group(x, down_idx)], -1)
        return self.relu(batch_norm(self.bn, self.linear(grouped))).max(dim=2).values


class PointTransformerBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, share_planes=8, nsample=16):
        super().__init__()
        self.linear1 = nn.Linear(in_planes, planes, bias=False)
        self.bn1 = nn.BatchNorm1d(planes)
        self.transformer2 = PointTransformerLayer(planes, planes, share_planes, nsample)
        self.bn2 = nn.BatchNorm1d(planes)
        self.linear3 = nn.Linear(planes, planes, bias=False)
        self.bn3 = nn.BatchNorm1d(planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, p, x, idx):
        y = self.relu(batch_norm(self.bn1, self.linear1(x)))
        y = self.relu(batch_norm(self.bn2, self.transformer2(p, y, idx)))
        return self.relu(batch_norm(self.bn3, self.linear3(y)) + x)


class SceneMapEncoder(nn.Module):
    """Contact map -> (B, N/64, planes[-1]) tokens (afford-motion's trans_enc contact encoder)."""

    def __init__(self, point_feat_dim: int = 6, planes=(32, 64, 128, 256), blocks=(2, 2, 2, 2),
                 num_points: int = 8192):
        super().__init__()
        self.num_points, self.c = num_points, point_feat_dim + 3
        in_planes = self.c
        for s, (width, depth) in enumerate(zip(planes, blocks)):
            layers = [TransitionDown(in_planes, width, STRIDES[s], NSAMPLES[s])]
            layers += [PointTransformerBlock(width, width, SHARE_PLANES, NSAMPLES[s]) for _ in range(1, depth)]
            setattr(self, f"enc{s + 1}", nn.Sequential(*layers))
            in_planes = width
        self.num_stages = len(planes)
        self.out_dim = planes[-1]
        self.num_tokens = num_points
        for stride in STRIDES:
            self.num_tokens //= stride           # tokens per scene of num_points points (N/64)

    def forward(self, p: torch.Tensor, x: torch.Tensor, hoods: list | None = None) -> torch.Tensor:
        """p (B, N, 3), x (B, N, point_feat_dim); hoods from `neighbourhoods(p)` if precomputed."""
        if hoods is None:
            hoods = neighbourhoods(p)
        x = torch.cat([p, x], -1)
        for s in range(self.num_stages):
            new_p, _, down, self_idx = hoods[s]
            stage = getattr(self, f"enc{s + 1}")
            x = stage[0](p, x, new_p, down)
            p = new_p
            for block in stage[1:]:
                x = block(p, x, self_idx)
        return x
