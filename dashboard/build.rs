//! Builds the web dashboard (`web/`, with npm and Vite) and embeds what it writes, so the
//! binary serves the dashboard with nothing else installed where it runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

fn main() {
    // Read when run, not when compiled: a build script compiled for one checkout is reused by
    // another that shares the target directory (a worktree).
    let Some(manifest_dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        fail("CARGO_MANIFEST_DIR is not set: run this through cargo");
    };
    let web = Path::new(&manifest_dir).join("web");
    for input in [
        "package.json",
        "package-lock.json",
        "index.html",
        "docs.html",
        "vite.config.js",
        "src",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(input).display());
    }
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        fail("OUT_DIR is not set: run this through cargo");
    };
    let out = PathBuf::from(out_dir).join("web");

    // `npm ci` installs exactly the lockfile; again only when the lockfile changed since.
    let installed = web.join("node_modules/.package-lock.json");
    if modified(&installed) < modified(&web.join("package-lock.json")) {
        npm(&web, &["ci", "--no-audit", "--no-fund"], &out);
    }
    npm(&web, &["run", "build"], &out);

    let mut files = Vec::new();
    collect(&out, &out, &mut files);
    files.sort();
    let mut code =
        String::from("/// Every file of the built dashboard: its URL path, type and bytes.\n");
    code.push_str("pub static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    for (url, path) in &files {
        let _ = writeln!(
            code,
            "    ({url:?}, {:?}, include_bytes!({:?})),",
            content_type(url),
            path.display().to_string()
        );
    }
    code.push_str("];\n");
    let generated = out.with_file_name("web_assets.rs");
    if let Err(e) = std::fs::write(&generated, code) {
        fail(&format!("cannot write {}: {e}", generated.display()));
    }
}

fn npm(web: &Path, args: &[&str], out: &Path) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(web)
        .env("FIELDLINE_WEB_OUT", out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "`npm {}` in {} failed ({s}); its output is above",
            args.join(" "),
            web.display()
        )),
        Err(e) => fail(&format!(
            "building the web dashboard needs Node.js 20 or newer and npm ({e}): install them \
             (Debian: apt-get install nodejs npm) and build again"
        )),
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => fail(&format!(
            "cannot read the built dashboard in {}: {e}",
            dir.display()
        )),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let url = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
            files.push((url, path));
        }
    }
}

fn content_type(url: &str) -> &'static str {
    match url.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1);
}
