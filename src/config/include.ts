/**
 * `include "PATTERN";` at the top level: the patterns are read relative to the
 * directory of the file that names them, `*` may appear in the last path
 * component only (as in `include "mirrorbd.d/*.res";`), and matches are read
 * in name order. A pattern without `*` must name a readable file; a pattern
 * with `*` may match nothing. This is the config's only file I/O besides
 * loadConfig itself.
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { configError, describeError } from '../errors.js';
import { tokenize, type Token } from './lexer.js';
import { parseTree, type Item } from './parser.js';

/** Deeper than this is a file that includes itself, not a real setup. */
export const MAX_INCLUDE_DEPTH = 8;

/** Bigger than any real config; refused before reading it into memory. */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

function fail(t: Token, message: string): never {
  throw configError(t.file, t.line, t.column, message);
}

/** Reads a config file whole, refusing huge ones before allocating. */
export async function readConfigText(file: string): Promise<string> {
  const handle = await fsp.open(file, 'r');
  try {
    const { size } = await handle.stat();
    if (size > MAX_CONFIG_BYTES) {
      throw Object.assign(new Error(`file is ${size} bytes, more than the ${MAX_CONFIG_BYTES} a config may have`), { code: 'EFBIG' });
    }
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}

function globToRegExp(pattern: string): RegExp {
  const body = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*');
  return new RegExp(`^${body}$`);
}

async function matches(tok: Token): Promise<string[]> {
  const full = resolve(dirname(tok.file), tok.text);
  const dir = dirname(full);
  const last = basename(full);
  if (dir.includes('*')) fail(tok, `found '*' before the last path component in include "${tok.text}", expected it only in the file name`);
  if (!last.includes('*')) return [full];
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    return fail(tok, `found include "${tok.text}" whose directory cannot be read (${describeError(e)}), expected a readable directory`);
  }
  const re = globToRegExp(last);
  // As in shells, `*` does not match hidden files unless the pattern starts with a dot.
  return names
    .filter((n) => re.test(n) && (last.startsWith('.') || !n.startsWith('.')))
    .sort()
    .map((n) => resolve(dir, n));
}

/** The items of a file with every top-level include replaced by the included items. */
export async function expandIncludes(items: readonly Item[], depth = 0): Promise<Item[]> {
  const out: Item[] = [];
  for (const item of items) {
    if (item.kind !== 'statement' || item.keyword.text !== 'include') {
      out.push(item);
      continue;
    }
    if (item.values.length === 0) fail(item.end, `found ';', expected a file name or pattern after 'include'`);
    if (depth >= MAX_INCLUDE_DEPTH) fail(item.keyword, `found include nested ${MAX_INCLUDE_DEPTH} deep, expected fewer levels (does a file include itself?)`);
    for (const tok of item.values) {
      for (const file of await matches(tok)) {
        let text: string;
        try {
          text = await readConfigText(file);
        } catch (e) {
          return fail(tok, `found include of ${file}, which cannot be read (${describeError(e)}), expected a readable file`);
        }
        out.push(...(await expandIncludes(parseTree(tokenize(text, file)), depth + 1)));
      }
    }
  }
  return out;
}
