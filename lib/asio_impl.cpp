// The single translation unit that compiles Asio's implementation (ASIO_SEPARATE_COMPILATION):
// every other file only sees declarations, which keeps builds on small machines tolerable.
#include <asio/impl/src.hpp>
