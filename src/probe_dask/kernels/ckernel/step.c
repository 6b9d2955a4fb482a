/* One trust-region iteration of every active pair, in one loop (probe_dask.kernels.step).
 *
 * The same arithmetic as probe_dask/core/solver.py (the reference, written in numpy and
 * documented step by step there and in docs/solver.md), pair by pair instead of ~100 numpy
 * temporaries per chunk: every expression keeps numpy's order of operations, and this file
 * is compiled without contraction into fused multiply-adds (the pragmas below), so each
 * pair's new state equals the numpy step's up to the last bits of libm's exp and log1p.
 * The state arrays are (L, C) row-major and updated in place at the active pairs' indices.
 */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <stdint.h>

/* numpy's NaN-propagating maximum / minimum (np.maximum, np.minimum, np.clip) */
static inline double np_max(double a, double b) { return (a >= b || isnan(a)) ? a : b; }
static inline double np_min(double a, double b) { return (a <= b || isnan(a)) ? a : b; }

/* numpy's npy_logaddexp(x, y) */
static double logaddexp(double x, double y) {
    if (x == y) return x + 0.693147180559945309417232121458176568; /* handles infinities */
    const double t = x - y;
    if (t > 0) return x + log1p(exp(-t));
    if (t <= 0) return y + log1p(exp(t));
    return t; /* NaN */
}

static inline double sigmoid(double x) {
    const double e = exp(-fabs(x));
    return x >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/* Problem constants and tuning, in this order (kernels/step.py packs them). */
enum { K_NROWS, K_RIDGE, K_EPS, K_DEC_TOL, K_GRAD_TOL, K_GROWTH, K_BACKTRACK, K_F_NOISE,
       K_DELTA, K_MAX_TRIES, K_LAM_MIN, K_LAM_MAX, K_DET_FLOOR, K_PRED_FLOOR, K_FALLBACK,
       K_BUDGET_MAX, K_COUNT };

/* The state arrays, in this order (TrustRegionState.FLOAT_FIELDS then BOOL_FIELDS). */
enum { S_B, S_W, S_LAM, S_PRED, S_LOSS, S_GRAD, S_DEC, S_BUDGET, S_STEP_B, S_STEP_U, S_QUAD,
       S_COUNT };

/* Statistics written to acc, in this order (summed / maxed over the pairs of one call). */
enum { A_STOPPED, A_CLIPPED, A_FALLBACK, A_BACKTRACKED, A_MAX_GRAD, A_MAX_DEC, A_MAX_STEP,
       A_SUM_LAM, A_SUM_LOSS, A_COUNT };

int pd_step(int64_t i0, int64_t i1, int64_t n_pairs, int64_t n_classes, const int64_t *flat,
            const double *sums, const double *k, const double *class_rows, const double *b0,
            const double *n0_l, const double *qx_l, const double *pos_lc, const double *vpos_lc,
            double *const *st, uint8_t *clipped_prev, uint8_t *active, uint8_t *converged,
            double *acc) {
    const double n_rows = k[K_NROWS], ridge = k[K_RIDGE], eps = k[K_EPS];
    const double n_div = n_rows > 1.0 ? n_rows : 1.0; /* max(n_rows, 1) of mean_nll */
    double n_stop = 0, n_clip = 0, n_fall = 0, n_back = 0, max_grad = 0, max_dec = 0;
    double max_step = 0, sum_lam = 0, sum_loss = 0;
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t f = flat[i], latent = f / n_classes, cls = f % n_classes;
        const double b = st[S_B][f], w = st[S_W][f];
        const double s_mu = sums[i], s_muv = sums[n_pairs + i], s_s = sums[2 * n_pairs + i];
        const double s_sv = sums[3 * n_pairs + i], s_sv2 = sums[4 * n_pairs + i];
        const double s_sp = sums[5 * n_pairs + i];

        /* objective.pair_derivatives */
        const double n0 = n0_l[latent], pc = class_rows[cls], pos = pos_lc[f], vpos = vpos_lc[f];
        const double mu0 = np_min(np_max(sigmoid(b), eps), 1.0 - eps);
        const double zero_pos = np_min(np_max(pc - pos, 0.0), n0);
        const double off = b - b0[cls];
        const double loss = (s_sp - b * pos - w * vpos + zero_pos * logaddexp(0.0, -b)
                             + (n0 - zero_pos) * logaddexp(0.0, b)) / n_div
                            + 0.5 * ridge * (w * w + off * off);
        const double d_g0 = (s_mu + n0 * mu0 - pc) / n_rows + ridge * off;
        const double d_g1 = (s_muv - vpos) / n_rows + ridge * w;
        const double d_h0 = (s_s + n0 * mu0 * (1.0 - mu0)) / n_rows + ridge;
        const double d_h1 = s_sv / n_rows, d_h2 = s_sv2 / n_rows + ridge;

        /* solver._step_pairs: the scaled model, gradient and decrement */
        const double qx = qx_l[latent];
        const double g0 = d_g0, g1 = d_g1 / qx, h0 = d_h0, h1 = d_h1 / qx, h2 = d_h2 / (qx * qx);
        const double grad = np_max(fabs(g0), fabs(g1));
        double dec;
        {   /* objective.newton_decrement */
            const double ng1 = d_g1 / qx, nh1 = d_h1 / qx, nh2 = d_h2 / (qx * qx);
            const double det = d_h0 * nh2 - nh1 * nh1;
            const double quad = (nh2 * d_g0 * d_g0 - 2.0 * nh1 * d_g0 * ng1 + d_h0 * ng1 * ng1) / det;
            dec = (det > 0 && isfinite(quad)) ? 0.5 * quad : INFINITY;
        }

        /* solver._lagged_ratio */
        double lam = st[S_LAM][f];
        const double pred_prev = st[S_PRED][f];
        const int clip_prev = clipped_prev[f] != 0;
        const double noise = k[K_F_NOISE] * fabs(s_sp) / n_rows;
        const int judged = isfinite(pred_prev) && pred_prev > noise;
        const double rho = (st[S_LOSS][f] - loss) / np_max(pred_prev, k[K_PRED_FLOOR]);
        double budget = st[S_BUDGET][f];
        const int good = judged && rho >= 0.75, bad = judged && !(rho > 0.25);
        const int widen = good && clip_prev && (k[K_GROWTH] > 1.0);
        if (good && !clip_prev) lam = lam * 0.1;
        if (bad || (judged && clip_prev && !widen)) lam = lam * 10.0;
        lam = np_min(np_max(lam, k[K_LAM_MIN]), k[K_LAM_MAX]);
        if (widen) budget = np_min(budget * k[K_GROWTH], k[K_BUDGET_MAX]);
        if (bad) budget = np_max(budget / k[K_GROWTH], k[K_DELTA]);
        const int back = k[K_BACKTRACK] != 0.0 && judged && !(rho >= 0);

        /* solver._stopping_rule */
        const int stop = !back && dec <= k[K_DEC_TOL] && grad <= k[K_GRAD_TOL];

        /* solver._damped_newton, then _downhill for a pair without an acceptable try */
        double db = 0.0, du = 0.0, pred = NAN;
        int clipped = 0, failed = 0;
        if (!stop && !back) {
            int ok = 0;
            for (int t = 0; t < (int)k[K_MAX_TRIES] && !ok; ++t) {
                const double hd0 = h0 + lam, hd2 = h2 + lam;
                const double det = hd0 * hd2 - h1 * h1;
                double tb = (hd2 * g0 - h1 * g1) / det, tu = (hd0 * g1 - h1 * g0) / det;
                const double norm = hypot(tb, tu);
                const int clip = norm > budget;
                const double shrink = clip ? budget / norm : 1.0;
                tb = tb * shrink;
                tu = tu * shrink;
                const double tp = g0 * tb + g1 * tu
                                  - 0.5 * (h0 * tb * tb + 2.0 * h1 * tb * tu + h2 * tu * tu);
                ok = isfinite(tp) && tp > 0 && fabs(det * qx * qx) > k[K_DET_FLOOR];
                if (ok) {
                    db = tb, du = tu, pred = tp, clipped = clip;
                } else {
                    lam = np_min(lam * 10.0, k[K_LAM_MAX]);
                }
            }
            if (!ok) {
                failed = 1;
                const double gnorm = hypot(g0, g1);
                const int usable = isfinite(gnorm) && gnorm > 0;
                const double along = usable ? k[K_FALLBACK] / gnorm : 0.0;
                db = usable ? along * g0 : 0.0;
                du = usable ? along * g1 : 0.0;
            }
        }
        double quad = h0 * db * db + 2.0 * h1 * db * du + h2 * du * du;
        double step_b = db, step_u = du, move_loss = loss;

        /* solver._backtrack: halfway back along the last step */
        if (back) {
            const double half_b = 0.5 * st[S_STEP_B][f], half_u = 0.5 * st[S_STEP_U][f];
            const double quad_old = st[S_QUAD][f];
            db = -half_b, du = -half_u, step_b = half_b, step_u = half_u;
            pred = 0.5 * pred_prev + 0.125 * quad_old;
            quad = 0.25 * quad_old;
            move_loss = st[S_LOSS][f];
        }

        /* solver._update */
        st[S_B][f] = b - db;
        st[S_W][f] = w - du / qx;
        st[S_LAM][f] = lam;
        st[S_PRED][f] = pred;
        clipped_prev[f] = (uint8_t)clipped;
        st[S_LOSS][f] = move_loss;
        st[S_GRAD][f] = grad;
        st[S_BUDGET][f] = budget;
        st[S_STEP_B][f] = step_b;
        st[S_STEP_U][f] = step_u;
        st[S_QUAD][f] = quad;
        st[S_DEC][f] = dec;
        active[f] = (uint8_t)!stop;
        converged[f] = (uint8_t)stop;

        n_stop += stop, n_clip += clipped, n_fall += failed, n_back += back;
        if (grad > max_grad) max_grad = grad; /* np.nanmax(..., initial=0): NaN ignored */
        if (dec > max_dec) max_dec = dec;
        const double len = hypot(db, du);
        if (len > max_step) max_step = len;
        if (!stop) sum_lam += lam;
        sum_loss += loss;
    }
    acc[A_STOPPED] = n_stop, acc[A_CLIPPED] = n_clip, acc[A_FALLBACK] = n_fall;
    acc[A_BACKTRACKED] = n_back, acc[A_MAX_GRAD] = max_grad, acc[A_MAX_DEC] = max_dec;
    acc[A_MAX_STEP] = max_step, acc[A_SUM_LAM] = sum_lam, acc[A_SUM_LOSS] = sum_loss;
    return 0;
}
