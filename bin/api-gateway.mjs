#!/usr/bin/env node
// The operator's command line: `npx api-gateway <command>` (README, "Command line"). In the image
// it runs the compiled code; in a checkout without a build, the TypeScript through tsx.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const built = fileURLToPath(new URL('../dist/src/cli/bin.js', import.meta.url));
if (existsSync(built)) {
  await import(pathToFileURL(built).href);
} else {
  const { tsImport } = await import('tsx/esm/api');
  await tsImport('../src/cli/bin.ts', import.meta.url);
}
