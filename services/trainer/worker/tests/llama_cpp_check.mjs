// Loads a GGUF model (and optionally a GGUF LoRA adapter) with node-llama-cpp (llama.cpp, CPU) and prints
// one JSON object to stdout: llama.cpp's tokenization of the prompt text, and for each of `steps` greedy
// steps the chosen token and the top next-token probabilities.
// Usage: node llama_cpp_check.mjs '{"model": "...gguf", "lora": "...gguf"|null, "text": "...", "ids": [..], "steps": 4}'
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const args = JSON.parse(process.argv[2]);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.model });
const context = await model.createContext({
  contextSize: 256,
  ...(args.lora ? { lora: { adapters: [{ filePath: args.lora, scale: 1 }] } } : {}),
});
const sequence = context.getSequence();
const steps = [];
const evaluation = sequence.evaluateWithMetadata(args.ids, { probabilities: true }, { temperature: 0 });
for await (const { token, probabilities } of evaluation) {
  const top = [...probabilities.entries()].sort((a, b) => b[1] - a[1]).slice(0, args.top ?? 8);
  steps.push({ token, top });
  if (steps.length >= args.steps) break;
}
const result = {
  tokens: model.tokenize(args.text),
  bos: model.tokens.bos,
  eos: model.tokens.eos,
  steps,
};
await context.dispose();
await model.dispose();
await llama.dispose();
process.stdout.write(JSON.stringify(result) + "\n");
