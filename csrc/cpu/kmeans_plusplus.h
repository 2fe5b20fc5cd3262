// Greedy k-means++ seeding on the CPU (scikit-learn's), batched over segments of rows; shared by
// kmeans.cpp (the kmeans_plusplus op) and kmeans_groups.cpp (seeding inside the per-group fit).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu/kmeans_rows.h"

namespace clustr_fast {
namespace {

// Rows of every segment cut into blocks of at most `bs` rows; the blocks of segment g are
// [gblk[g], gblk[g+1]).
struct SegmentBlocks {
  std::vector<int64_t> start, end, group, gblk;
};

SegmentBlocks make_blocks(const int64_t* offsets, int64_t G, int64_t bs) {
  SegmentBlocks b;
  b.gblk.push_back(0);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t r = offsets[g]; r < offsets[g + 1]; r += bs) {
      b.start.push_back(r);
      b.end.push_back(std::min(offsets[g + 1], r + bs));
      b.group.push_back(g);
    }
    b.gblk.push_back(static_cast<int64_t>(b.start.size()));
  }
  return b;
}

// The candidates' distances with one vector lane per candidate: lanes hold up to W candidates
// (cT[j] = coordinate j of each), so a row costs D broadcasts, subtractions and FMAs for all of
// them, with no horizontal sums; eight rows share each load of cT[j]. Same terms as
// row_to_few, summed in coordinate order. Writes dc and adds the partial potentials to part
// (Weighted: each row's term times w[i]). cT: scratch of D * W values (plain T storage: a vector
// of V may not be 32-byte aligned).
template <typename T, bool Weighted>
inline __attribute__((always_inline)) void eval_candidates_lanes(const T* x, int64_t N, int64_t D,
                                                                 const int64_t* cand, int64_t m, const T* closest,
                                                                 const T* w, int64_t i0, int64_t i1, T* dc,
                                                                 double* part, T* cT) {
  using V = typename Vec32<T>::type;
  constexpr int W = Vec32<T>::W;
  for (int64_t j = 0; j < D; ++j)
    for (int l = 0; l < W; ++l) cT[j * W + l] = x[cand[std::min<int64_t>(l, m - 1)] * D + j];
  double pacc[W] = {};
  auto finish = [&](const V& acc, int64_t i) {
    const V cl = V{} + closest[i];
    const V mn = acc < cl ? acc : cl;
    if constexpr (Weighted) {
      const double wi = static_cast<double>(w[i]);
      for (int l = 0; l < W; ++l) pacc[l] += wi * static_cast<double>(mn[l]);
    } else {
      for (int l = 0; l < W; ++l) pacc[l] += static_cast<double>(mn[l]);  // every lane: vectorizes
    }
    std::memcpy(dc + i * W, &acc, sizeof(V));  // lane layout: row i's W lanes side by side
  };
  constexpr int R = 8;  // rows at once: 8 independent FMA chains hide the FMA latency
  int64_t i = i0;
  for (; i + R <= i1; i += R) {
    const T* r0 = x + i * D;
    V a[R];
    for (int r = 0; r < R; ++r) a[r] = V{};
    for (int64_t j = 0; j < D; ++j) {
      V c;
      std::memcpy(&c, cT + j * W, sizeof(V));
      for (int r = 0; r < R; ++r) {
        const V d = r0[r * D + j] - c;
        a[r] += d * d;
      }
    }
    for (int r = 0; r < R; ++r) finish(a[r], i + r);
  }
  for (; i < i1; ++i) {
    V a{};
    for (int64_t j = 0; j < D; ++j) {
      V c;
      std::memcpy(&c, cT + j * W, sizeof(V));
      const V df = x[i * D + j] - c;
      a += df * df;
    }
    finish(a, i);
  }
  for (int64_t l = 0; l < m; ++l) part[l] += pacc[l];
}

// Candidate distances dc: with lanes (candidate_lanes), candidate t's distance to row i sits at
// dc[(t / W) * W * N + i * W + t % W] (one vector store per row and chunk of W candidates);
// otherwise at dc[t * N + i]. slot_of gives (pointer to row 0, stride between rows).
inline bool candidate_lanes(int64_t nt) { return nt >= 3; }  // lanes pay off from a few candidates on

template <typename T>
inline std::pair<const T*, int64_t> slot_of(const T* dc, int64_t N, int64_t nt, int64_t t) {
  constexpr int64_t W = Vec32<T>::W;
  if (candidate_lanes(nt)) return {dc + (t / W) * W * N + t % W, W};
  return {dc + t * N, 1};
}

// dc (layout above) = ||x_i - x_{cand_t}||^2 for the rows [i0, i1); part[t] = sum_i w_i min(closest_i, dc)
// (w_i = 1 when w is null). scratch: D * Vec32<T>::W values (allocated by the caller: nothing may
// throw in a clone).
template <typename T, bool Weighted>
inline __attribute__((always_inline)) void eval_candidates(const T* x, int64_t N, int64_t D, const int64_t* cand,
                                                           int64_t nt, const T* closest, const T* w, int64_t i0,
                                                           int64_t i1, T* dc, double* part, T* scratch) {
  if (candidate_lanes(nt)) {
    constexpr int64_t W = Vec32<T>::W;
    for (int64_t t0 = 0; t0 < nt; t0 += W) {
      for (int64_t t = t0; t < std::min(nt, t0 + W); ++t) part[t] = 0.0;
      eval_candidates_lanes<T, Weighted>(x, N, D, cand + t0, std::min(W, nt - t0), closest, w, i0, i1, dc + t0 * N,
                                         part + t0, scratch);
    }
    return;
  }
  constexpr int64_t kMax = 64;
  const T* cs[kMax];
  T v[kMax];
  for (int64_t t0 = 0; t0 < nt; t0 += kMax) {
    const int64_t m = std::min(kMax, nt - t0);
    for (int64_t t = 0; t < m; ++t) {
      cs[t] = x + cand[t0 + t] * D;
      part[t0 + t] = 0.0;
    }
    for (int64_t i = i0; i < i1; ++i) {
      sqdist_to_many<T>(x + i * D, cs, m, D, v);
      const double wi = Weighted ? static_cast<double>(w[i]) : 1.0;
      for (int64_t t = 0; t < m; ++t) {
        dc[(t0 + t) * N + i] = v[t];
        part[t0 + t] += wi * static_cast<double>(std::min(v[t], closest[i]));
      }
    }
  }
}
template <typename T>
inline __attribute__((always_inline)) void eval_candidates_either(const T* x, int64_t N, int64_t D,
                                                                  const int64_t* cand, int64_t nt, const T* cl,
                                                                  const T* w, int64_t i0, int64_t i1, T* dc,
                                                                  double* part, T* scratch) {
  if (w != nullptr)
    eval_candidates<T, true>(x, N, D, cand, nt, cl, w, i0, i1, dc, part, scratch);
  else
    eval_candidates<T, false>(x, N, D, cand, nt, cl, w, i0, i1, dc, part, scratch);
}
CLUSTR_VEC_CLONES void eval_candidates_f(const float* x, int64_t N, int64_t D, const int64_t* cand, int64_t nt,
                                         const float* cl, const float* w, int64_t i0, int64_t i1, float* dc,
                                         double* part, float* scratch) {
  eval_candidates_either<float>(x, N, D, cand, nt, cl, w, i0, i1, dc, part, scratch);
}
CLUSTR_VEC_CLONES void eval_candidates_d(const double* x, int64_t N, int64_t D, const int64_t* cand, int64_t nt,
                                         const double* cl, const double* w, int64_t i0, int64_t i1, double* dc,
                                         double* part, double* scratch) {
  eval_candidates_either<double>(x, N, D, cand, nt, cl, w, i0, i1, dc, part, scratch);
}
inline void eval_candidates_any(const float* x, int64_t N, int64_t D, const int64_t* cand, int64_t nt,
                                const float* cl, const float* w, int64_t i0, int64_t i1, float* dc, double* part,
                                float* scratch) {
  eval_candidates_f(x, N, D, cand, nt, cl, w, i0, i1, dc, part, scratch);
}
inline void eval_candidates_any(const double* x, int64_t N, int64_t D, const int64_t* cand, int64_t nt,
                                const double* cl, const double* w, int64_t i0, int64_t i1, double* dc, double* part,
                                double* scratch) {
  eval_candidates_d(x, N, D, cand, nt, cl, w, i0, i1, dc, part, scratch);
}

// One D^2 draw in segment g: the first row whose running weight exceeds u * total, weights
// w_i D^2_i with D^2_i = min(closest[i], pending[i]) (pending: distances to the last chosen center,
// not yet folded into closest; may be null; w_i = 1 when w is null), or 1 for rows of positive
// weight not chosen yet when every such weight is 0.
template <typename T>
int64_t sample_row(const SegmentBlocks& blk, int64_t g, double u, const double* wsum, const double* wfree,
                   const T* closest, const T* pending, int64_t pstride, const uint8_t* chosen, const T* w) {
  double total = 0.0, free = 0.0;
  for (int64_t b = blk.gblk[g]; b < blk.gblk[g + 1]; ++b) {
    total += wsum[b];
    free += wfree[b];
  }
  const bool use_free = !(total > 0.0);
  const double target = u * (use_free ? free : total);
  double cum = 0.0;
  int64_t found = -1, last_pos = -1;
  for (int64_t b = blk.gblk[g]; b < blk.gblk[g + 1]; ++b) {
    const double v = use_free ? wfree[b] : wsum[b];
    if (v > 0.0) last_pos = b;
    if (cum + v > target) {
      found = b;
      break;
    }
    cum += v;
  }
  const int64_t b = found >= 0 ? found : (last_pos >= 0 ? last_pos : blk.gblk[g]);
  int64_t pick = -1, last_row = blk.start[b];
  for (int64_t i = blk.start[b]; i < blk.end[b]; ++i) {
    const T d2 = pending ? std::min(closest[i], pending[i * pstride]) : closest[i];
    const double wi = w != nullptr ? static_cast<double>(w[i]) : 1.0;
    const double v = use_free ? (chosen[i] || !(wi > 0.0) ? 0.0 : 1.0) : wi * static_cast<double>(d2);
    if (v > 0.0) last_row = i;
    cum += v;
    if (found >= 0 && cum > target) {
      pick = i;
      break;
    }
  }
  return pick >= 0 ? pick : last_row;
}

// Greedy k-means++ with one parallel pass over x per step. The pass over a block first folds
// the distances to the previous step's chosen center into `closest`, then computes the T
// candidate distances and their partial potentials. The partial potential of the chosen
// candidate is the block's D^2 weight of the next draw, so no second pass is needed. w (may be
// null): row weights, in the draws and the potentials.
template <typename T>
void plusplus_impl(const T* xp, int64_t N, int64_t D, const int64_t* offsets, int64_t G, int64_t k,
                   const int64_t* first, const double* draws, int64_t nt, int64_t* indices, const T* w = nullptr) {
  constexpr int64_t BS = 512;
  const SegmentBlocks blk = make_blocks(offsets, G, BS);
  const int64_t NB = static_cast<int64_t>(blk.start.size());
  constexpr int64_t W = Vec32<T>::W;
  const int64_t slots = candidate_lanes(nt) ? (nt + W - 1) / W * W : nt;
  std::vector<T> closest(N, std::numeric_limits<T>::infinity()), dc(slots * N);
  std::vector<uint8_t> chosen(N, 0);
  std::vector<double> wsum(NB, 0.0), wfree(NB), part(NB * nt);
  for (int64_t b = 0; b < NB; ++b) {
    wfree[b] = static_cast<double>(blk.end[b] - blk.start[b]);
    if (w != nullptr)
      for (int64_t i = blk.start[b]; i < blk.end[b]; ++i) wfree[b] -= w[i] > T(0) ? 0.0 : 1.0;
  }
  std::vector<int64_t> cand(G * nt), pending(G, -1);  // pending[g]: slot of dc to fold into closest
  for (int64_t s = 0; s < k; ++s) {
    for (int64_t g = 0; g < G; ++g) {
      const auto [pend, pstride] =
          pending[g] >= 0 ? slot_of<T>(dc.data(), N, nt, pending[g]) : std::pair<const T*, int64_t>{nullptr, 1};
      for (int64_t t = 0; t < nt; ++t)
        cand[g * nt + t] = s == 0 ? first[g]
                                  : sample_row<T>(blk, g, draws[((s - 1) * G + g) * nt + t], wsum.data(),
                                                  wfree.data(), closest.data(), pend, pstride, chosen.data(), w);
    }
    parallel_items(NB, [&] { return std::vector<T>(D * W); }, [&](std::vector<T>& scratch, int64_t b) {
      const int64_t g = blk.group[b];
      if (pending[g] >= 0) {
        const auto [row, stride] = slot_of<T>(dc.data(), N, nt, pending[g]);
        for (int64_t i = blk.start[b]; i < blk.end[b]; ++i) closest[i] = std::min(closest[i], row[i * stride]);
      }
      eval_candidates_any(xp, N, D, cand.data() + g * nt, nt, closest.data(), w, blk.start[b], blk.end[b],
                          dc.data(), part.data() + b * nt, scratch.data());
    });
    for (int64_t g = 0; g < G; ++g) {  // greedy choice: least potential, first on ties
      int64_t bt = 0;
      double bp = std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < nt; ++t) {
        double pot = 0.0;
        for (int64_t b = blk.gblk[g]; b < blk.gblk[g + 1]; ++b) pot += part[b * nt + t];
        if (pot < bp) {
          bp = pot;
          bt = t;
        }
      }
      const int64_t row = cand[g * nt + bt];
      indices[g * k + s] = row;
      if (!chosen[row] && (w == nullptr || w[row] > T(0))) wfree[blk.gblk[g] + (row - offsets[g]) / BS] -= 1.0;
      chosen[row] = 1;
      for (int64_t b = blk.gblk[g]; b < blk.gblk[g + 1]; ++b) wsum[b] = part[b * nt + bt];
      pending[g] = bt;
    }
  }
}

}  // namespace
}  // namespace clustr_fast
