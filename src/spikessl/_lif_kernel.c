/* Fused multi-step LIF kernels for float32 on the CPU (see spikessl/_native.py).
 *
 * Eq. (6): U[t] = beta*U[t-1] + I[t] - theta*S[t-1],  S[t] = U[t] > theta.
 * Layout: time-major [T, N]; N neurons are split into blocks, each block stepped through
 * all T steps while its state stays in L1, so the input is read once and membrane and
 * spikes written once, instead of ~5 full-size passes per step in eager PyTorch.
 *
 * lif_forward is compiled with -ffp-contract=off and without fast-math: it performs the
 * same float32 operations in the same order as snntorch (mul, add, then sub), so the
 * membranes are bit-identical. lif_backward only needs 1e-5 agreement and may vectorise exp.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 1024

#ifdef LIF_FORWARD
void lif_forward(const float *cur, int64_t T, int64_t N, int constant, float beta, float thr,
                 float *mem, float *spk, int nthreads) {
    const int64_t nblocks = (N + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t n0 = blk * BLOCK;
        const int64_t len = (N - n0) < BLOCK ? (N - n0) : BLOCK;
        float prev[BLOCK];
        memset(prev, 0, sizeof(prev));
        for (int64_t t = 0; t < T; t++) {
            const float *in = (constant ? cur : cur + t * N) + n0;
            float *m = mem + t * N + n0;
            float *s = spk + t * N + n0;
            for (int64_t i = 0; i < len; i++) {
                const float p = prev[i];
                const float reset = p > thr ? thr : 0.0f; /* theta * S[t-1] */
                float u = beta * p;
                u = u + in[i];
                u = u - reset;
                m[i] = u;
                s[i] = u > thr ? 1.0f : 0.0f;
                prev[i] = u;
            }
        }
    }
}

/* LIF followed by k x k max-pooling of its spikes (stride k, floor), fused: the full-size
 * spike map is never written. Layout [T, P, H, W] with P = batch * channels planes; each
 * block holds whole planes so the pooled spikes of step t come from the block's own U[t].
 * *count receives the number of (unpooled) spikes, for firing rates. */
void lif_pool_forward(const float *cur, int64_t T, int64_t P, int64_t H, int64_t W, int64_t k,
                      int constant, float beta, float thr, float *mem, float *out, double *count,
                      int nthreads) {
    const int64_t HW = H * W, OH = H / k, OW = W / k, OHW = OH * OW, N = P * HW;
    const int64_t G = HW >= BLOCK ? 1 : BLOCK / HW; /* planes per block */
    const int64_t nblocks = (P + G - 1) / G;
    double total = 0.0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : total)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t p0 = blk * G, g = (P - p0) < G ? (P - p0) : G, len = g * HW;
        float *prev = calloc(len, sizeof(float));
        int64_t spikes = 0;
        for (int64_t t = 0; t < T; t++) {
            const float *in = (constant ? cur : cur + t * N) + p0 * HW;
            float *m = mem + t * N + p0 * HW;
            for (int64_t i = 0; i < len; i++) {
                const float p = prev[i];
                const float reset = p > thr ? thr : 0.0f;
                float u = beta * p;
                u = u + in[i];
                u = u - reset;
                m[i] = u;
                prev[i] = u;
                spikes += u > thr;
            }
            for (int64_t q = 0; q < g; q++) {
                const float *mp = m + q * HW;
                float *o = out + t * P * OHW + (p0 + q) * OHW;
                for (int64_t oh = 0; oh < OH; oh++)
                    for (int64_t ow = 0; ow < OW; ow++) {
                        float s = 0.0f;
                        for (int64_t dy = 0; dy < k; dy++)
                            for (int64_t dx = 0; dx < k; dx++)
                                s = mp[(oh * k + dy) * W + ow * k + dx] > thr ? 1.0f : s;
                        o[oh * OW + ow] = s;
                    }
            }
        }
        free(prev);
        total += (double)spikes;
    }
    *count = total;
}
#endif

#ifdef LIF_BACKWARD
/* dL/dU[t] = dL/dS[t] * S'(U[t]) + dL/dU[t](direct) + dL/dU[t+1] * (beta - theta*S'(U[t])*keep)
 * with S'(U) = k sig(k(U - theta)) (1 - sig(k(U - theta))), keep = 0 for a detached reset.
 * grad_cur gets dL/dU[t] (or its sum over t for a constant input); *grad_beta gets
 * sum_{t>=1} dL/dU[t] * U[t-1] when want_beta. */
void lif_backward(const float *mem, const float *gs, const float *gm, int64_t T, int64_t N,
                  int constant, int detach_reset, float beta, float thr, float slope,
                  float *grad_cur, int want_beta, double *grad_beta, int nthreads) {
    const int64_t nblocks = (N + BLOCK - 1) / BLOCK;
    const float keep = detach_reset ? 0.0f : thr;
    double acc = 0.0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : acc)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t n0 = blk * BLOCK;
        const int64_t len = (N - n0) < BLOCK ? (N - n0) : BLOCK;
        float g[BLOCK], total[BLOCK];
        memset(g, 0, sizeof(g));
        memset(total, 0, sizeof(total));
        double block_acc = 0.0;
        for (int64_t t = T - 1; t >= 0; t--) {
            const float *m = mem + t * N + n0;
            const float *s_grad = gs ? gs + t * N + n0 : 0;
            const float *m_grad = gm ? gm + t * N + n0 : 0;
            float *out = constant ? total : grad_cur + t * N + n0;
            float beta_part = 0.0f;
            for (int64_t i = 0; i < len; i++) {
                float x = slope * (m[i] - thr);
                x = x < -80.0f ? -80.0f : (x > 80.0f ? 80.0f : x); /* exp stays finite */
                const float sig = 1.0f / (1.0f + expf(-x));
                const float sg = slope * sig * (1.0f - sig);
                float local = s_grad ? s_grad[i] * sg : 0.0f;
                if (m_grad) local += m_grad[i];
                beta_part += g[i] * m[i]; /* dL/dU[t+1] * U[t] */
                const float gt = local + g[i] * (beta - keep * sg);
                g[i] = gt;
                if (constant) out[i] += gt; else out[i] = gt;
            }
            if (want_beta) block_acc += beta_part;
        }
        if (constant) memcpy(grad_cur + n0, total, len * sizeof(float));
        acc += block_acc;
    }
    *grad_beta = acc;
}
/* Backward of lif_pool_forward. Each pooled gradient goes to the window's first spiking
 * afferent in row-major order, or to its first afferent when none spiked: exactly where
 * torch's max_pool2d sends it (first maximum). Then the same adjoint as lif_backward. */
void lif_pool_backward(const float *mem, const float *gout, int64_t T, int64_t P, int64_t H,
                       int64_t W, int64_t k, int constant, int detach_reset, float beta,
                       float thr, float slope, float *grad_cur, int want_beta, double *grad_beta,
                       int nthreads) {
    const int64_t HW = H * W, OH = H / k, OW = W / k, OHW = OH * OW, N = P * HW;
    const int64_t G = HW >= BLOCK ? 1 : BLOCK / HW;
    const int64_t nblocks = (P + G - 1) / G;
    const float keep = detach_reset ? 0.0f : thr;
    double acc = 0.0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : acc)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t p0 = blk * G, g = (P - p0) < G ? (P - p0) : G, len = g * HW;
        float *gnext = calloc(len, sizeof(float));
        float *gs = malloc(len * sizeof(float));
        float *total = constant ? calloc(len, sizeof(float)) : 0;
        double block_acc = 0.0;
        for (int64_t t = T - 1; t >= 0; t--) {
            const float *m = mem + t * N + p0 * HW;
            memset(gs, 0, len * sizeof(float));
            for (int64_t q = 0; q < g; q++) {
                const float *mp = m + q * HW;
                const float *go = gout + t * P * OHW + (p0 + q) * OHW;
                for (int64_t oh = 0; oh < OH; oh++)
                    for (int64_t ow = 0; ow < OW; ow++) {
                        int64_t best = (oh * k) * W + ow * k;
                        int found = 0;
                        for (int64_t dy = 0; dy < k && !found; dy++)
                            for (int64_t dx = 0; dx < k && !found; dx++) {
                                const int64_t j = (oh * k + dy) * W + ow * k + dx;
                                if (mp[j] > thr) { best = j; found = 1; }
                            }
                        gs[q * HW + best] += go[oh * OW + ow];
                    }
            }
            float *out = constant ? total : grad_cur + t * N + p0 * HW;
            float beta_part = 0.0f;
            for (int64_t i = 0; i < len; i++) {
                float x = slope * (m[i] - thr);
                x = x < -80.0f ? -80.0f : (x > 80.0f ? 80.0f : x);
                const float sig = 1.0f / (1.0f + expf(-x));
                const float sg = slope * sig * (1.0f - sig);
                beta_part += gnext[i] * m[i];
                const float gt = gs[i] * sg + gnext[i] * (beta - keep * sg);
                gnext[i] = gt;
                if (constant) out[i] += gt; else out[i] = gt;
            }
            if (want_beta) block_acc += beta_part;
        }
        if (constant) memcpy(grad_cur + p0 * HW, total, len * sizeof(float));
        free(gnext);
        free(gs);
        free(total);
        acc += block_acc;
    }
    *grad_beta = acc;
}
#endif
