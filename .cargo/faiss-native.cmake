# Builds the faiss that the `faiss` feature links (the test oracle and the bench's peer) for the
# SIMD level of the machine that compiles it, as users get faiss from PyPI (faiss-cpu dispatches
# to its AVX2 / AVX-512 builds at run time). faiss-sys builds faiss with cmake and sets no SIMD
# flags; the cmake crate passes this file to it through CMAKE_TOOLCHAIN_FILE (.cargo/config.toml).
# The release flags come after cc's `-march=x86-64` on the command line, so `native` wins.
# Only cmake builds read it: nothing else in the workspace (the plugin, the C ABI) is affected.
set(CMAKE_C_FLAGS_RELEASE_INIT "-O3 -DNDEBUG -march=native")
set(CMAKE_CXX_FLAGS_RELEASE_INIT "-O3 -DNDEBUG -march=native")
