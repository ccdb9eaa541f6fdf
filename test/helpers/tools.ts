/**
 * Tests that drive a real client need its binary. Where it is missing the test
 * says so in one line and is skipped, unless MIRRORBD_REQUIRE_TOOLS=1 (as in
 * CI), where a missing tool is a failure.
 */
import { spawnSync } from 'node:child_process';

export const requireTools = process.env.MIRRORBD_REQUIRE_TOOLS === '1';

const cache = new Map<string, boolean>();

export function hasTool(name: string): boolean {
  let found = cache.get(name);
  if (found === undefined) {
    found = spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
    cache.set(name, found);
  }
  return found;
}

/**
 * The tools from `names` that are missing. Prints one line per missing tool;
 * throws when tools are required.
 */
export function missingTools(...names: string[]): string[] {
  const missing = names.filter((n) => !hasTool(n));
  if (missing.length > 0) {
    const line = `missing tool(s): ${missing.join(', ')} (.ci/run lists the Debian packages the tests need)`;
    if (requireTools) throw new Error(`${line}; MIRRORBD_REQUIRE_TOOLS=1`);
    console.warn(`skipping: ${line}`);
  }
  return missing;
}
