/**
 * Tokens of the DRBD-style config syntax. Pure: text in, tokens out.
 *
 * A word is a run of characters other than white space, `{`, `}`, `;`, `"`
 * and `#`, so addresses (`[::1]:7789`), paths and sizes (`100M`) are single
 * words. A quoted string may hold anything but a raw line break; `\"`, `\\`,
 * `\n` and `\t` are its escapes. `#` starts a comment that runs to the end of
 * the line. Every token carries the file, line and column (both 1-based)
 * where it starts, so later stages can point at it.
 */
import { configError } from '../errors.js';

export type TokenKind = 'word' | 'string' | '{' | '}' | ';' | 'eof';

export interface SourceLoc {
  file: string;
  line: number;
  column: number;
}

export interface Token extends SourceLoc {
  kind: TokenKind;
  /** The word, or the string's value with escapes resolved. */
  text: string;
}

/** No real value comes near this; a longer one is a runaway (a lost quote). */
export const MAX_TOKEN_CHARS = 4096;

const ESCAPES: Readonly<Record<string, string>> = { '"': '"', '\\': '\\', n: '\n', t: '\t' };

const PUNCTUATION = new Set(['{', '}', ';']);

function isSpace(ch: string): boolean {
  return ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r';
}

function isControl(ch: string): boolean {
  const code = ch.charCodeAt(0);
  return (code < 0x20 && ch !== '\t') || code === 0x7f;
}

function ends(ch: string): boolean {
  return isSpace(ch) || PUNCTUATION.has(ch) || ch === '"' || ch === '#';
}

/** Shows a found character so that invisible ones are still readable. */
export function describeChar(ch: string): string {
  const code = ch.charCodeAt(0);
  return isControl(ch) ? `control character U+${code.toString(16).padStart(4, '0').toUpperCase()}` : `'${ch}'`;
}

export function tokenize(text: string, file: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  let line = 1;
  let lineStart = 0;
  const here = (): SourceLoc => ({ file, line, column: i - lineStart + 1 });
  const fail = (loc: SourceLoc, message: string): never => {
    throw configError(loc.file, loc.line, loc.column, message);
  };

  while (i < text.length) {
    const ch = text[i]!;
    if (ch === '\n') {
      i++;
      line++;
      lineStart = i;
      continue;
    }
    if (isSpace(ch)) {
      i++;
      continue;
    }
    if (ch === '#') {
      while (i < text.length && text[i] !== '\n') i++;
      continue;
    }
    const start = here();
    if (PUNCTUATION.has(ch)) {
      tokens.push({ ...start, kind: ch as TokenKind, text: ch });
      i++;
      continue;
    }
    if (ch === '"') {
      i++;
      let value = '';
      for (;;) {
        if (i >= text.length || text[i] === '\n') {
          fail(start, `found an unterminated string, expected a closing '"' on the same line`);
        }
        const c = text[i]!;
        if (c === '"') {
          i++;
          break;
        }
        if (value.length >= MAX_TOKEN_CHARS) fail(start, `found a string longer than ${MAX_TOKEN_CHARS} characters, expected a shorter value`);
        if (c === '\\') {
          const next = i + 1 < text.length ? text[i + 1]! : '';
          const resolved = ESCAPES[next];
          if (resolved === undefined) {
            fail(here(), `found escape '\\${next}' in a string, expected one of \\" \\\\ \\n \\t`);
          }
          value += resolved;
          i += 2;
          continue;
        }
        if (isControl(c)) fail(here(), `found ${describeChar(c)} in a string, expected printable text (use \\n or \\t)`);
        value += c;
        i++;
      }
      tokens.push({ ...start, kind: 'string', text: value });
      continue;
    }
    if (isControl(ch)) fail(start, `found ${describeChar(ch)}, expected a word, a string, '{', '}' or ';'`);
    let j = i;
    while (j < text.length && !ends(text[j]!)) {
      if (isControl(text[j]!)) {
        i = j;
        fail(here(), `found ${describeChar(text[j]!)}, expected a word, a string, '{', '}' or ';'`);
      }
      j++;
    }
    if (j - i > MAX_TOKEN_CHARS) fail(start, `found a word longer than ${MAX_TOKEN_CHARS} characters, expected a shorter value`);
    tokens.push({ ...start, kind: 'word', text: text.slice(i, j) });
    i = j;
  }
  tokens.push({ ...here(), kind: 'eof', text: '' });
  return tokens;
}

/** Long values are cut in messages; the position already says where they are. */
const MAX_SHOWN_CHARS = 60;

function shown(text: string): string {
  const printable = JSON.stringify(text).slice(1, -1);
  return printable.length > MAX_SHOWN_CHARS ? `${printable.slice(0, MAX_SHOWN_CHARS)}...` : printable;
}

/** How a token is named in "found ..." messages. */
export function describeToken(t: Token): string {
  switch (t.kind) {
    case 'eof':
      return 'end of file';
    case 'string':
      return `string "${shown(t.text)}"`;
    case 'word':
      return `'${shown(t.text)}'`;
    case '{':
    case '}':
    case ';':
      return `'${t.kind}'`;
  }
}
