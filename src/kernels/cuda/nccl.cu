/*
 * nccl.cu: the CUDA backend's collectives across processes (the device part's group_*
 * members), on NCCL. The build needs only NCCL's header (FINCH_HAVE_NCCL); the library is
 * opened when the backend starts (finch_cuda_nccl_load), so finch runs where NCCL is not
 * installed, the host's MPI sum serving then, and processes that never use a device do
 * not pay for loading it. Each process of a job drives one device; rank 0 makes the
 * group's id, the job's own channel (MPI) hands it to every rank, and each joins as its
 * rank. The sum runs on the legacy default stream like every op, so it is ordered after
 * the backward that wrote the gradients and before the copy that brings them back.
 *
 * NCCL waits for every rank inside a collective: a rank that dies leaves the others
 * waiting, so the job's launcher (mpirun) ends them, as it does for a rank lost in MPI.
 */
#include "kernels/cuda/cuda.h"

#ifdef FINCH_HAVE_NCCL
#include <nccl.h>

#include <dlfcn.h>
#include <string.h>

namespace {
/* NCCL's functions, from the library opened at run time */
struct {
    ncclResult_t (*get_unique_id)(ncclUniqueId *);
    ncclResult_t (*comm_init_rank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*comm_destroy)(ncclComm_t);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t,
                               ncclComm_t, cudaStream_t);
    const char *(*error_string)(ncclResult_t);
} nccl;
ncclComm_t comm;

finch_status nccl_failed(ncclResult_t r, const char *what, finch_err *err) {
    return finch_err_set(err, FINCH_E_IO, "NCCL %s: %s", what, nccl.error_string(r));
}
} // namespace

static_assert(sizeof(ncclUniqueId) <= FINCH_GROUP_ID_MAX, "an NCCL id fits the group id");

bool finch_cuda_nccl_load(void) {
#ifdef FINCH_NCCL_LINKED /* the functions linked in (the host emulation's) */
    nccl = {ncclGetUniqueId, ncclCommInitRank, ncclCommDestroy, ncclAllReduce,
            ncclGetErrorString};
    return true;
#else
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return false;
    nccl.get_unique_id = (decltype(nccl.get_unique_id))dlsym(lib, "ncclGetUniqueId");
    nccl.comm_init_rank = (decltype(nccl.comm_init_rank))dlsym(lib, "ncclCommInitRank");
    nccl.comm_destroy = (decltype(nccl.comm_destroy))dlsym(lib, "ncclCommDestroy");
    nccl.all_reduce = (decltype(nccl.all_reduce))dlsym(lib, "ncclAllReduce");
    nccl.error_string = (decltype(nccl.error_string))dlsym(lib, "ncclGetErrorString");
    if (nccl.get_unique_id && nccl.comm_init_rank && nccl.comm_destroy && nccl.all_reduce &&
        nccl.error_string)
        return true;
    dlclose(lib);
    return false;
#endif
}

finch_status finch_cuda_group_id(void *id, finch_err *err) {
    ncclUniqueId u;
    ncclResult_t r = nccl.get_unique_id(&u);
    if (r != ncclSuccess) return nccl_failed(r, "could not make the group's id", err);
    memcpy(id, &u, sizeof u);
    return FINCH_OK;
}

finch_status finch_cuda_group_join(const void *id, int rank, int n, finch_err *err) {
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    if (comm) nccl.comm_destroy(comm);
    comm = nullptr;
    ncclResult_t r = nccl.comm_init_rank(&comm, n, u, rank);
    if (r != ncclSuccess) {
        comm = nullptr;
        return nccl_failed(r, "could not join the group", err);
    }
    return FINCH_OK;
}

finch_status finch_cuda_group_sum(float *x, int64_t n, finch_err *err) {
    FINCH_ASSERT(comm);
    ncclResult_t r = nccl.all_reduce(x, x, (size_t)n, ncclFloat, ncclSum, comm, 0);
    if (r != ncclSuccess) return nccl_failed(r, "sum across the ranks failed", err);
    return FINCH_OK;
}
#endif /* FINCH_HAVE_NCCL */
