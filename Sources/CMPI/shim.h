// Open MPI's handles are macros over global symbols, which Swift cannot import.
// Each one is re-exposed here as a static inline function.
#ifndef GPT2DIST_CMPI_SHIM_H
#define GPT2DIST_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm gd_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm gd_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype gd_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype gd_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype gd_mpi_int(void) { return MPI_INT; }
static inline MPI_Datatype gd_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype gd_mpi_uint64(void) { return MPI_UINT64_T; }
static inline MPI_Datatype gd_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Op gd_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op gd_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op gd_mpi_min(void) { return MPI_MIN; }
static inline MPI_Op gd_mpi_bxor(void) { return MPI_BXOR; }
static inline void *gd_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Request gd_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *gd_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Status *gd_mpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline MPI_Errhandler gd_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int gd_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static inline int gd_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int gd_mpi_success(void) { return MPI_SUCCESS; }
#endif
