#!/usr/bin/env node
// The operator's command line: `npx api-gateway <command>` (README, "Command line"). In a checkout
// it runs the TypeScript through tsx (so it is never older than the code beside it); in the
// image, which ships no sources, the compiled code.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const source = fileURLToPath(new URL('../src/cli/bin.ts', import.meta.url));
if (existsSync(source)) {
  const { tsImport } = await import('tsx/esm/api');
  await tsImport('../src/cli/bin.ts', import.meta.url);
} else {
  await import(pathToFileURL(fileURLToPath(new URL('../dist/src/cli/bin.js', import.meta.url))).href);
}
