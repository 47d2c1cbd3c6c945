// @vitest-environment jsdom
/** The React 18 run is React 18 throughout: the client's imports, react-dom and the testing library's. */
import { createRequire } from "node:module";
import { version as reactVersion } from "react";
import { version as domVersion } from "react-dom";
import { describe, expect, it } from "vitest";

describe("React 18 run", () => {
  it("resolves react, react-dom and @testing-library/react's react to 18.x", () => {
    expect(reactVersion).toMatch(/^18\./);
    expect(domVersion).toMatch(/^18\./);
    const rtl = createRequire(import.meta.url).resolve("@testing-library/react");
    const fromRtl = createRequire(rtl);
    expect((fromRtl("react") as { version: string }).version).toMatch(/^18\./);
    expect((fromRtl("react-dom") as { version: string }).version).toMatch(/^18\./);
  });
});
