/* SPDX-License-Identifier: MPL-2.0 OR GPL-2.0 */
/* kernel_platform/parallel.c: parallel jobs on the module's workqueue (kernel_platform/parallel.rs). */
#ifndef MLSDISK_PAR_HELPERS_H
#define MLSDISK_PAR_HELPERS_H

int mlsdisk_par_init(void);
void mlsdisk_par_exit(void);
unsigned int mlsdisk_par_width(void);
void mlsdisk_par_run(void (*fn)(void *ctx, unsigned int idx), void *ctx, unsigned int n);
/* C only (kernel_platform/platform.c): the "mlsdisk_sync" WQ_MEM_RECLAIM workqueue made
 * by mlsdisk_par_init, NULL before it or after mlsdisk_par_exit. */
struct workqueue_struct;
struct workqueue_struct *mlsdisk_sync_wq(void);

#endif
