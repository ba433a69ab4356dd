; Inno Setup 6 script of Hilum's Windows installer (built by installer\windows\build.ps1:
;   ISCC.exe /DAppVersion=0.1.0 /DRepo=C:\src\hilum installer\windows\hilum.iss)
; Installs the PyInstaller bundle (dist\hilum) into Program Files\Hilum, a Start-menu entry (hilumw.exe:
; no console window), hilum.exe on the PATH (optional task), and opens .dcm files and DICOMDIR with Hilum
; ("Open with" for .dcm, without taking the default from another viewer unless the user chooses it).

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef Repo
  #define Repo "..\.."
#endif

[Setup]
AppId={{6C1E5A3B-7F0D-4C2B-9E55-2B8C1D0F4A11}
AppName=Hilum
AppVersion={#AppVersion}
AppPublisher=Hilum developers
DefaultDirName={autopf}\Hilum
DefaultGroupName=Hilum
DisableProgramGroupPage=yes
OutputDir={#Repo}\dist
OutputBaseFilename=hilum-{#AppVersion}-setup
SetupIconFile={#Repo}\resources\icons\hilum.ico
UninstallDisplayIcon={app}\hilumw.exe
Compression=lzma2/max
SolidCompression=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
PrivilegesRequiredOverridesAllowed=dialog
ChangesAssociations=yes
ChangesEnvironment=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "dcmdefault"; Description: "Open .dcm files with Hilum by default"; GroupDescription: "File types:"; Flags: unchecked
Name: "addtopath"; Description: "Add hilum.exe to the PATH (command line: hilum serve, hilum import...)"; GroupDescription: "Command line:"

[Files]
Source: "{#Repo}\dist\hilum\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\Hilum"; Filename: "{app}\hilumw.exe"; Parameters: "gui"
Name: "{group}\Hilum self-test"; Filename: "{cmd}"; Parameters: "/k ""{app}\hilum.exe"" selftest"
Name: "{autodesktop}\Hilum"; Filename: "{app}\hilumw.exe"; Parameters: "gui"; Tasks: desktopicon

[Registry]
; the program's file type (ProgID) and its open command: hilum gui "<file>"
Root: HKA; Subkey: "Software\Classes\Hilum.DICOM"; ValueType: string; ValueName: ""; ValueData: "DICOM image"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\Hilum.DICOM\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: "{app}\hilumw.exe,0"
Root: HKA; Subkey: "Software\Classes\Hilum.DICOM\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\hilumw.exe"" gui ""%1"""
; .dcm: offered in "Open with"; the default only when the task was chosen
Root: HKA; Subkey: "Software\Classes\.dcm\OpenWithProgids"; ValueType: string; ValueName: "Hilum.DICOM"; ValueData: ""; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.dcm"; ValueType: string; ValueName: ""; ValueData: "Hilum.DICOM"; Flags: uninsdeletevalue; Tasks: dcmdefault
Root: HKA; Subkey: "Software\Classes\.dcm"; ValueType: string; ValueName: "Content Type"; ValueData: "application/dicom"; Flags: uninsdeletevalue createvalueifdoesntexist
; DICOMDIR has no extension: offer Hilum on folders ("Open with Hilum" on a CD/DVD/USB folder holding DICOMDIR)
Root: HKA; Subkey: "Software\Classes\Directory\shell\Hilum"; ValueType: string; ValueName: ""; ValueData: "Open with Hilum"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\Directory\shell\Hilum"; ValueType: string; ValueName: "Icon"; ValueData: "{app}\hilumw.exe,0"
Root: HKA; Subkey: "Software\Classes\Directory\shell\Hilum\command"; ValueType: string; ValueName: ""; ValueData: """{app}\hilumw.exe"" gui ""%1"""
Root: HKA; Subkey: "Software\Classes\Applications\hilumw.exe\SupportedTypes"; ValueType: string; ValueName: ".dcm"; ValueData: ""
; PATH (per-user or machine, as installed)
Root: HKCU; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Check: NeedsAddPath(ExpandConstant('{app}')) and not IsAdminInstallMode; Tasks: addtopath
Root: HKLM; Subkey: "SYSTEM\CurrentControlSet\Control\Session Manager\Environment"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Check: NeedsAddPath(ExpandConstant('{app}')) and IsAdminInstallMode; Tasks: addtopath

[Run]
Filename: "{app}\hilumw.exe"; Parameters: "gui"; Description: "Start Hilum"; Flags: nowait postinstall skipifsilent

[Code]
function NeedsAddPath(Dir: string): Boolean;
var
  Path: string;
begin
  if IsAdminInstallMode then
    RegQueryStringValue(HKLM, 'SYSTEM\CurrentControlSet\Control\Session Manager\Environment', 'Path', Path)
  else
    RegQueryStringValue(HKCU, 'Environment', 'Path', Path);
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Path) + ';') = 0;
end;
