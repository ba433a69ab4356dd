# Build Hilum for Windows: the PyInstaller one-folder bundle (dist\hilum\hilum.exe + hilumw.exe), then the
# installer (dist\hilum-<version>-setup.exe) with Inno Setup 6 when ISCC.exe is found.
#
#   powershell -ExecutionPolicy Bypass -File installer\windows\build.ps1 [-Python py] [-NoInstaller]
#
# Needs: Python 3.11 x64 (python.org or `winget install Python.Python.3.11`), Inno Setup 6 for the
# installer (`winget install JRSoftware.InnoSetup`).  Run from anywhere; it works in the repository root.
# Not run by the project's CI (Linux only): see installer\DESKTOP.md.
param(
    [string]$Python = "py -3.11",
    [switch]$NoInstaller
)
$ErrorActionPreference = "Stop"
$Repo = Resolve-Path (Join-Path $PSScriptRoot "..\..")
Set-Location $Repo

if (-not (Test-Path ".venv\Scripts\python.exe")) {
    Invoke-Expression "$Python -m venv .venv"
}
$Py = Join-Path $Repo ".venv\Scripts\python.exe"
& $Py -m pip install --upgrade pip
& $Py -m pip install -e ".[test]"          # Hilum, its pins, and pyinstaller==6.19.0 (test extra)
if ($LASTEXITCODE -ne 0) { throw "pip install failed" }

& $Py resources\icons\make_icons.py       # hilum.ico (the spec's icon), PNGs, SVG

$env:PYTHONPATH = Join-Path $Repo "app"
$sw = [Diagnostics.Stopwatch]::StartNew()
& $Py -m PyInstaller --noconfirm --clean --distpath dist --workpath build\pyinstaller installer\pyinstaller\hilum.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
$sw.Stop()
$Version = (& dist\hilum\hilum.exe --version).Split(" ")[1]
if ($LASTEXITCODE -ne 0) { throw "the bundle does not start" }
& dist\hilum\hilum.exe selftest
if ($LASTEXITCODE -ne 0) { throw "hilum selftest failed in the bundle" }
$Size = (Get-ChildItem dist\hilum -Recurse | Measure-Object -Property Length -Sum).Sum / 1MB
Write-Host ("bundle dist\hilum built in {0:N0} s, {1:N0} MB, version {2}" -f $sw.Elapsed.TotalSeconds, $Size, $Version)

if ($NoInstaller) { exit 0 }
$Iscc = @("${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe", "$env:ProgramFiles\Inno Setup 6\ISCC.exe",
          "$env:LOCALAPPDATA\Programs\Inno Setup 6\ISCC.exe") | Where-Object { Test-Path $_ } | Select-Object -First 1
if (-not $Iscc) { throw "Inno Setup 6 (ISCC.exe) not found: winget install JRSoftware.InnoSetup, or use -NoInstaller" }
& $Iscc "/DAppVersion=$Version" "/DRepo=$Repo" installer\windows\hilum.iss
if ($LASTEXITCODE -ne 0) { throw "ISCC failed" }
Write-Host "installer: dist\hilum-$Version-setup.exe"
