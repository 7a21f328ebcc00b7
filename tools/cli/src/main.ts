import { run } from "./cli.js";

process.exitCode = await run(process.argv.slice(2), process.env, {
  out: (text) => process.stdout.write(text.endsWith("\n") || text === "" ? text : `${text}\n`),
  err: (text) => process.stderr.write(`${text}\n`),
});
