// Intentionally empty: node-llama-cpp asks a binaries package for getBinsDir(); without it, it falls back to the CPU build.
export {};
