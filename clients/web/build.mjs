// Builds the web app into dist/ (what the edge serves at `/`, edge.web_dir): the bundle of
// app/main.ts with the SDK, plus the static files.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["app/main.ts"],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  outfile: "dist/app.js",
  logLevel: "warning",
});
for (const f of ["index.html", "app.css"]) copyFileSync(`app/${f}`, `dist/${f}`);
console.log("clients/web: built dist/");
