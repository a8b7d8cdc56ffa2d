/* Fused multi-step LIF kernels for float32 on the CPU (see spikessl/_native.py).
 *
 * Eq. (6): U[t] = beta*U[t-1] + I[t] - theta*S[t-1],  S[t] = U[t] > theta.
 * Neurons are split into blocks (one image, or 1024 neurons) and each block is stepped
 * through all T steps while its state stays in cache: the input is read once and the
 * membrane written once, instead of ~5 full-size passes per step in eager PyTorch.
 *
 * The LIF_FORWARD part is compiled with -ffp-contract=off and without fast-math: it does
 * the same float32 operations in the same order as snntorch (mul, add, then sub), so the
 * membranes are bit-identical; backward recomputes membranes with the same exported
 * function, so its spike decisions always agree with the forward pass. LIF_BACKWARD only
 * needs 1e-5 agreement and is compiled with fast-math so that exp vectorises.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 1024

/* one step of eq. (6) for n neurons: prev holds U[t-1] in and U[t] out; returns spikes.
 * m (may be NULL) gets a copy of U[t] after all of in is read: m == in is allowed. */
int64_t lif_step(const float *in, float *restrict prev, float *m, int64_t n, float beta,
                 float thr);

/* offset of (c, y, x) in one C x H x W image stored NCHW or channels-last (NHWC) */
static inline int64_t at(int nhwc, int64_t c, int64_t y, int64_t x, int64_t C, int64_t H,
                         int64_t W) {
    return nhwc ? (y * W + x) * C + c : (c * H + y) * W + x;
}

/* one pooled C x OH x OW image from NHWC (src_nhwc) to NCHW, or the other way */
static void relayout(const float *restrict src, float *restrict dst, int64_t C, int64_t P,
                     int src_nhwc) {
    for (int64_t p = 0; p < P; p++)
        for (int64_t c = 0; c < C; c++) {
            if (src_nhwc)
                dst[c * P + p] = src[p * C + c];
            else
                dst[p * C + c] = src[c * P + p];
        }
}

#ifdef LIF_FORWARD
int64_t lif_step(const float *in, float *restrict prev, float *m, int64_t n, float beta,
                 float thr) {
    int64_t spikes = 0;
    for (int64_t i = 0; i < n; i++) {
        const float p = prev[i];
        const float reset = p > thr ? thr : 0.0f; /* theta * S[t-1] */
        float u = beta * p;
        u = u + in[i];
        u = u - reset;
        prev[i] = u;
        spikes += u > thr;
    }
    if (m) memcpy(m, prev, n * sizeof(float));
    return spikes;
}

void lif_forward(const float *cur, int64_t T, int64_t N, int constant, float beta, float thr,
                 float *mem, float *spk, int nthreads) {
    const int64_t nblocks = (N + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t n0 = blk * BLOCK, len = (N - n0) < BLOCK ? (N - n0) : BLOCK;
        float prev[BLOCK];
        memset(prev, 0, sizeof(prev));
        for (int64_t t = 0; t < T; t++) {
            lif_step((constant ? cur : cur + t * N) + n0, prev, mem + t * N + n0, len, beta, thr);
            float *restrict s = spk + t * N + n0;
            for (int64_t i = 0; i < len; i++) s[i] = prev[i] > thr ? 1.0f : 0.0f;
        }
    }
}

/* max over k x k windows (stride k, floor) of the spikes u > thr of one image */
static void pool_image(const float *restrict u, float *restrict o, int64_t C, int64_t H,
                       int64_t W, int64_t k, int nhwc, float thr) {
    const int64_t OH = H / k, OW = W / k;
    if (nhwc) { /* channels innermost: vectorised over c */
        for (int64_t oy = 0; oy < OH; oy++)
            for (int64_t ox = 0; ox < OW; ox++) {
                float *restrict oc = o + (oy * OW + ox) * C;
                for (int64_t c = 0; c < C; c++) oc[c] = 0.0f;
                for (int64_t dy = 0; dy < k; dy++)
                    for (int64_t dx = 0; dx < k; dx++) {
                        const float *restrict uc = u + ((oy * k + dy) * W + ox * k + dx) * C;
                        for (int64_t c = 0; c < C; c++) oc[c] = uc[c] > thr ? 1.0f : oc[c];
                    }
            }
        return;
    }
    for (int64_t c = 0; c < C; c++)
        for (int64_t oy = 0; oy < OH; oy++)
            for (int64_t ox = 0; ox < OW; ox++) {
                float s = 0.0f;
                for (int64_t dy = 0; dy < k; dy++)
                    for (int64_t dx = 0; dx < k; dx++)
                        s = u[at(0, c, oy * k + dy, ox * k + dx, C, H, W)] > thr ? 1.0f : s;
                o[at(0, c, oy, ox, C, OH, OW)] = s;
            }
}

/* LIF followed by max-pooling of its spikes, fused: the full-size spike map is never
 * written. Tensors are [T*B, C, H, W] (constant input: [B, C, H, W]), NCHW or channels-last
 * (nhwc); the pooled output is channels-last when out_nhwc. Each block is one image. mem may
 * be NULL (backward then recomputes the membranes from the input) or, for a non-constant
 * input, cur itself: each membrane overwrites the input it was computed from. *count gets
 * the number of spikes, for firing rates. */
void lif_pool_forward(const float *cur, int64_t T, int64_t B, int64_t C, int64_t H, int64_t W,
                      int64_t k, int constant, int nhwc, int out_nhwc, float beta, float thr,
                      float *mem, float *restrict out, double *count, int nthreads) {
    const int64_t CHW = C * H * W, P = (H / k) * (W / k), COHW = C * P;
    double total = 0.0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : total)
    for (int64_t b = 0; b < B; b++) {
        float *restrict prev = calloc(CHW, sizeof(float));
        float *restrict tmp = nhwc != out_nhwc ? malloc(COHW * sizeof(float)) : 0;
        int64_t spikes = 0;
        for (int64_t t = 0; t < T; t++) {
            const float *in = cur + (constant ? b : t * B + b) * CHW;
            spikes += lif_step(in, prev, mem ? mem + (t * B + b) * CHW : 0, CHW, beta, thr);
            float *o = out + (t * B + b) * COHW;
            pool_image(prev, tmp ? tmp : o, C, H, W, k, nhwc, thr);
            if (tmp) relayout(tmp, o, C, P, nhwc);
        }
        free(tmp);
        free(prev);
        total += (double)spikes;
    }
    *count = total;
}
#endif

#ifdef LIF_BACKWARD
/* One reverse step of the adjoint for n neurons with membrane m = U[t]:
 *   dL/dU[t] = gs * S'(U[t]) + dL/dU[t+1] * (beta - theta*S'(U[t])*keep)  (+ gm, direct)
 * with S'(U) = k sig(k(U - theta)) (1 - sig(k(U - theta))), keep = 0 for a detached reset.
 * g holds dL/dU[t+1] in and dL/dU[t] out; returns sum dL/dU[t+1] * U[t] (for dL/dbeta).
 * out may be m itself (element i is read before it is written). */
static float adjoint_step(const float *m, const float *restrict gs, const float *restrict gm,
                          float *restrict g, float *out, int accumulate, int64_t n, float beta,
                          float thr, float slope, float keep) {
    float beta_part = 0.0f;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; i++) {
        float x = slope * (m[i] - thr);
        x = x < -80.0f ? -80.0f : (x > 80.0f ? 80.0f : x); /* exp stays finite */
        const float sig = 1.0f / (1.0f + expf(-x));
        const float sg = slope * sig * (1.0f - sig);
        float local = gs ? gs[i] * sg : 0.0f;
        if (gm) local += gm[i];
        beta_part += g[i] * m[i];
        const float gt = local + g[i] * (beta - keep * sg);
        g[i] = gt;
        if (accumulate) out[i] += gt; else out[i] = gt;
    }
    return beta_part;
}

/* grad_cur gets dL/dU[t] (its sum over t for a constant input); *grad_beta gets
 * sum_{t>=1} dL/dU[t] U[t-1] when want_beta. gs or gm may be NULL (no gradient). */
void lif_backward(const float *mem, const float *gs, const float *gm, int64_t T, int64_t N,
                  int constant, int detach_reset, float beta, float thr, float slope,
                  float *grad_cur, int want_beta, double *grad_beta, int nthreads) {
    const int64_t nblocks = (N + BLOCK - 1) / BLOCK;
    const float keep = detach_reset ? 0.0f : thr;
    double acc = 0.0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : acc)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t n0 = blk * BLOCK, len = (N - n0) < BLOCK ? (N - n0) : BLOCK;
        float g[BLOCK];
        memset(g, 0, sizeof(g));
        if (constant) memset(grad_cur + n0, 0, len * sizeof(float));
        double block_acc = 0.0;
        for (int64_t t = T - 1; t >= 0; t--) {
            const int64_t o = t * N + n0;
            float part = adjoint_step(mem + o, gs ? gs + o : 0, gm ? gm + o : 0, g,
                                      constant ? grad_cur + n0 : grad_cur + o, constant, len,
                                      beta, thr, slope, keep);
            block_acc += part;
        }
        acc += block_acc;
    }
    *grad_beta = want_beta ? acc : 0.0;
}

/* Backward of lif_pool_forward. Each pooled gradient goes to the window's first spiking
 * afferent in row-major order, or to its first afferent when none spiked: exactly where
 * torch's max_pool2d sends it (first maximum). With mem NULL the membranes are recomputed
 * from cur, one image at a time, with the forward's own lif_step (bit-identical). */
static void route_image(const float *restrict u, const float *restrict go, float *restrict gs,
                        float *restrict done, int64_t C, int64_t H, int64_t W, int64_t k,
                        int nhwc, float thr) {
    const int64_t OH = H / k, OW = W / k;
    memset(gs, 0, C * H * W * sizeof(float));
    if (nhwc) { /* vectorised over channels */
        for (int64_t oy = 0; oy < OH; oy++)
            for (int64_t ox = 0; ox < OW; ox++) {
                const float *restrict gc = go + (oy * OW + ox) * C;
                for (int64_t c = 0; c < C; c++) done[c] = 0.0f;
                for (int64_t dy = 0; dy < k; dy++)
                    for (int64_t dx = 0; dx < k; dx++) {
                        const int64_t base = ((oy * k + dy) * W + ox * k + dx) * C;
                        for (int64_t c = 0; c < C; c++) {
                            const int fire = u[base + c] > thr && done[c] == 0.0f;
                            gs[base + c] = fire ? gc[c] : 0.0f;
                            done[c] = fire ? 1.0f : done[c];
                        }
                    }
                const int64_t first = ((oy * k) * W + ox * k) * C;
                for (int64_t c = 0; c < C; c++)
                    gs[first + c] = done[c] == 0.0f ? gc[c] : gs[first + c];
            }
        return;
    }
    for (int64_t c = 0; c < C; c++)
        for (int64_t oy = 0; oy < OH; oy++)
            for (int64_t ox = 0; ox < OW; ox++) {
                int64_t best = at(0, c, oy * k, ox * k, C, H, W);
                int found = 0;
                for (int64_t dy = 0; dy < k && !found; dy++)
                    for (int64_t dx = 0; dx < k && !found; dx++) {
                        const int64_t j = at(0, c, oy * k + dy, ox * k + dx, C, H, W);
                        if (u[j] > thr) { best = j; found = 1; }
                    }
                gs[best] = go[at(0, c, oy, ox, C, OH, OW)];
            }
}

/* gout is channels-last when out_nhwc; grad_cur may be mem itself (non-constant input):
 * the gradient of each step then overwrites the membrane it was computed from. */
void lif_pool_backward(const float *mem, const float *restrict cur, const float *restrict gout,
                       int64_t T, int64_t B, int64_t C, int64_t H, int64_t W, int64_t k,
                       int constant, int nhwc, int out_nhwc, int detach_reset, float beta,
                       float thr, float slope, float *grad_cur, int want_beta,
                       double *grad_beta, int nthreads) {
    const int64_t CHW = C * H * W, P = (H / k) * (W / k), COHW = C * P;
    const float keep = detach_reset ? 0.0f : thr;
    double acc = 0.0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : acc)
    for (int64_t b = 0; b < B; b++) {
        float *restrict g = calloc(CHW, sizeof(float));
        float *restrict gs = malloc(CHW * sizeof(float));
        float *restrict done = malloc(C * sizeof(float));
        float *restrict tmp = nhwc != out_nhwc ? malloc(COHW * sizeof(float)) : 0;
        float *restrict trace = 0; /* this image's U[0..T-1] when recomputed */
        if (!mem) {
            trace = malloc(T * CHW * sizeof(float));
            float *restrict prev = calloc(CHW, sizeof(float));
            for (int64_t t = 0; t < T; t++)
                lif_step(cur + (constant ? b : t * B + b) * CHW, prev, trace + t * CHW, CHW,
                         beta, thr);
            free(prev);
        }
        if (constant) memset(grad_cur + b * CHW, 0, CHW * sizeof(float));
        double block_acc = 0.0;
        for (int64_t t = T - 1; t >= 0; t--) {
            const float *u = trace ? trace + t * CHW : mem + (t * B + b) * CHW;
            const float *go = gout + (t * B + b) * COHW;
            if (tmp) relayout(go, tmp, C, P, out_nhwc);
            route_image(u, tmp ? tmp : go, gs, done, C, H, W, k, nhwc, thr);
            float *out = grad_cur + (constant ? b : t * B + b) * CHW;
            float part = adjoint_step(u, gs, 0, g, out, constant, CHW, beta, thr, slope, keep);
            block_acc += part;
        }
        free(trace);
        free(tmp);
        free(g);
        free(gs);
        free(done);
        acc += block_acc;
    }
    *grad_beta = want_beta ? acc : 0.0;
}
#endif
