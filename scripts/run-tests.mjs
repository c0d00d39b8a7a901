#!/usr/bin/env node
// Runs the node test runner over every *.test.ts file in the named folders of test/.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const suites = process.argv.slice(2);
const files = [];
function collect(dir) {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) collect(path);
    else if (name.endsWith('.test.ts')) files.push(path);
  }
}
for (const suite of suites) if (existsSync(join('test', suite))) collect(join('test', suite));
if (files.length === 0) {
  console.error(`no test files under ${suites.map((s) => `test/${s}`).join(', ')}`);
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  // A file whose set-up failed may leave a server open: --test-force-exit ends it once its tests
  // are done, and no single test may run past two minutes, so CI can never hang on one.
  ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-force-exit', '--test-timeout=120000', ...files],
  { stdio: 'inherit', env: { ...process.env, NODE_ENV: 'test' } },
);
process.exit(result.status ?? 1);
