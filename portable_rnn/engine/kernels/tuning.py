"""The fast kernels' tuning constants, read at every call (a test or a user may change them).

How each was measured is in the documentation's performance page.
"""

#: Rows (steps x batch) per chunk of the backward's weight-gradient matmuls
#: (and per chunk of the forward's input projection).
CHUNK_ROWS = 1024
#: Elements (steps x batch x hidden) per pass of the backward's gate-derivative
#: factors: enough steps per call to amortise NumPy's call overhead when N*H is
#: small, one step (cache-resident) when it is large.
FACTOR_ELEMENTS = 1 << 14
#: Multiply-adds (rows x inner x columns) from which a kernel on torch tensors
#: runs a matmul with torch's BLAS rather than NumPy's: where OpenBLAS starts
#: running a product on more than the calling thread (M N K / 2^18 threads), so
#: NumPy's BLAS never wakes threads of its own beside torch's.
TORCH_MATMUL_MIN = 1 << 19
#: Multiply-adds of the GRU's recurrent product (N x 3H x H) from which its
#: kernel keeps NumPy's BLAS on torch tensors too.
GRU_TORCH_BLAS_MAX = 1 << 26
#: Hidden units per step (N * H) from which the LSTM kernel on torch tensors
#: computes its cell update with torch's ops: below it, NumPy's ~1 us per call
#: beats torch's dispatch more than torch's faster sigmoid gains back.
TORCH_GATES_MIN = 1 << 13
