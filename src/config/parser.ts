/**
 * The syntax tree of a config file. Pure and schema-free: it knows only that
 * a file is a list of items, and an item is either a statement
 * (`keyword value... ;`) or a section (`keyword [name] { items }`). Which
 * keywords exist and what their values mean is the schema's business, so a
 * new key never touches this file.
 */
import { configError } from '../errors.js';
import { describeToken, type Token } from './lexer.js';

export interface Statement {
  kind: 'statement';
  keyword: Token;
  values: Token[];
  /** The `;` that ends it (messages about a missing value point here). */
  end: Token;
}

export interface Section {
  kind: 'section';
  keyword: Token;
  /** Words between the keyword and `{` (the `r0` of `resource r0 {`). */
  args: Token[];
  items: Item[];
}

export type Item = Statement | Section;

/**
 * The grammar nests three deep (resource > on/net > nothing); a little room
 * above that keeps errors about misplaced sections precise, and the bound
 * keeps a file of `{{{{...` from exhausting the stack.
 */
export const MAX_NESTING = 8;

export function parseTree(tokens: readonly Token[]): Item[] {
  let pos = 0;
  const peek = (): Token => tokens[pos]!;
  const fail = (t: Token, message: string): never => {
    throw configError(t.file, t.line, t.column, message);
  };

  const parseItems = (depth: number, opener: Token | null): Item[] => {
    const items: Item[] = [];
    for (;;) {
      const t = peek();
      if (t.kind === 'eof') {
        if (opener !== null) {
          fail(t, `found end of file, expected '}' to close '${opener.text}' opened at ${opener.line}:${opener.column}`);
        }
        return items;
      }
      if (t.kind === '}') {
        if (opener === null) fail(t, `found '}' with no open section, expected a keyword`);
        pos++;
        return items;
      }
      if (t.kind !== 'word') fail(t, `found ${describeToken(t)}, expected a keyword`);
      items.push(parseItem(depth));
    }
  };

  const parseItem = (depth: number): Item => {
    const keyword = tokens[pos++]!;
    const values: Token[] = [];
    for (;;) {
      const t = peek();
      if (t.kind === 'word' || t.kind === 'string') {
        values.push(t);
        pos++;
        continue;
      }
      if (t.kind === ';') {
        pos++;
        return { kind: 'statement', keyword, values, end: t };
      }
      if (t.kind === '{') {
        if (depth + 1 > MAX_NESTING) fail(t, `found '{' nested more than ${MAX_NESTING} deep, expected '}' or ';'`);
        pos++;
        const items = parseItems(depth + 1, keyword);
        return { kind: 'section', keyword, args: values, items };
      }
      // '}' or end of file: the statement was never ended.
      return fail(t, `found ${describeToken(t)}, expected ';' after '${keyword.text}'`);
    }
  };

  return parseItems(0, null);
}
